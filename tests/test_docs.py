"""The docs cannot rot: docs/api.md names every public name and nothing
that does not exist; docs/design.md's system-call table lists every system
call with the worker that really serves it, and its worked example runs;
the docs and the README link only to files that exist and mention nothing
that was removed."""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import random
import re
import socket
import sys
import tomllib
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
API = DOCS / "api.md"
DESIGN = DOCS / "design.md"

# The public modules and where api.md documents them (one "## module" heading each).
PUBLIC_MODULES = [
    "threadlib", "threadlib.lowlevel", "threadlib.net", "threadlib.syscalls", "threadlib.sync",
    "threadlib.io.sockio", "threadlib.io.fileio", "threadlib.io.aioworker", "threadlib.io.splice",
    "threadlib.io.tcpsockio", "threadlib.io.happy_eyeballs", "threadlib.io.tls", "threadlib.frontends.green",
    "threadlib.process.multicore", "threadlib.process.signals", "threadlib.process.subprocess", "threadlib.loop",
    "threadlib.testing.pytest_plugin", "threadlib.sim",
]

# "- `threadlib.x.y(args)` — ..." (a list entry, possibly indented); the
# name must be followed by its argument list or by the closing backtick.
ENTRY = re.compile(r"^\s*- `(threadlib(?:\.[A-Za-z_]\w*)*)(\([^`]*\))?`")


# ---------------------------------------------------------------------------
# Reading the documents


def sections(path: pathlib.Path, level: str = "## ") -> dict[str, list[str]]:
    """The lines under each heading of the given level (code blocks skipped)."""
    out: dict[str, list[str]] = {}
    current = None
    fenced = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        if line.startswith(level):
            current = line[len(level):].strip()
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return out


def api_entries() -> dict[str, list[tuple[str, str | None]]]:
    """heading -> [(qualified name, argument list or None), ...] of api.md."""
    found = {}
    for heading, lines in sections(API).items():
        found[heading] = []
        for line in lines:
            m = ENTRY.match(line)
            if m:
                found[heading].append((m.group(1), m.group(2)))
    return found


def public_names(module: types.ModuleType) -> list[str]:
    """``__all__``, or for a module without one the public names it defines
    itself (classes and functions defined there, and instances of them)."""
    exported = getattr(module, "__all__", None)
    if exported is not None:
        return list(exported)
    names = []
    for name, obj in vars(module).items():
        if name.startswith("_") or isinstance(obj, types.ModuleType):
            continue
        origin = getattr(obj, "__module__", None) if isinstance(obj, (type, types.FunctionType)) \
            else type(obj).__module__
        if origin == module.__name__:
            names.append(name)
    return names


def resolve(qualname: str) -> tuple[object, object]:
    """Walk ``qualname`` as a user would: attributes first, importing a
    submodule only where no attribute of that name exists (so the function
    ``tcpsockio.network`` wins over the submodule of the same name);
    returns (object, the object it was found on). Raises ImportError or
    AttributeError for a name that does not exist."""
    parts = qualname.split(".")
    obj: object = importlib.import_module(parts[0])
    owner: object = None
    for i, attr in enumerate(parts[1:], start=1):
        owner = obj
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            if not isinstance(obj, types.ModuleType):
                raise
            obj = importlib.import_module(".".join(parts[: i + 1]))
    return obj, owner


def split_arguments(arglist: str) -> list[str]:
    """The top-level, comma-separated pieces of "(a, b=f(1, 2), *c)"."""
    inner = arglist[1:-1]
    pieces, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(inner):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            pieces.append(inner[start:i].strip())
            start = i + 1
    if inner[start:].strip():
        pieces.append(inner[start:].strip())
    return pieces


# ---------------------------------------------------------------------------
# api.md


def test_every_public_module_has_its_heading():
    headings = set(sections(API))
    missing = [m for m in PUBLIC_MODULES if m not in headings]
    assert not missing, f"docs/api.md has no '## <module>' heading for {missing}"


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_is_documented_under_its_module(module_name):
    module = importlib.import_module(module_name)
    documented = {name for name, _ in api_entries().get(module_name, [])}
    missing = [n for n in public_names(module) if f"{module_name}.{n}" not in documented]
    assert not missing, (f"docs/api.md lacks entries '- `{module_name}.<name>`' under "
                         f"'## {module_name}' for: {', '.join(missing)}")


def public_classes() -> dict[int, type]:
    """id -> class, for every class among the public names (once each)."""
    classes = {}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in public_names(module):
            obj = getattr(module, name)
            if isinstance(obj, type) and obj.__module__.startswith("threadlib"):
                classes[id(obj)] = obj
    return classes


def own_public_members(cls: type) -> list[str]:
    """The public methods, properties and attributes a class defines itself,
    leaving out overrides of a threadlib base class's member (documented
    there, e.g. ``Worker.attach``) and the data fields of system calls
    (their constructor arguments)."""
    from threadlib.syscalls import SystemCall

    members = []
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if issubclass(cls, SystemCall) and isinstance(value, types.MemberDescriptorType):
            continue
        if any(name in vars(base) for base in cls.__mro__[1:] if base.__module__.startswith("threadlib")):
            continue
        members.append(name)
    return members


def test_every_public_member_of_every_public_class_is_documented():
    documented: dict[int, set[str]] = {}
    for entries in api_entries().values():
        for qualname, _ in entries:
            owner_name, _, member = qualname.rpartition(".")
            try:
                owner, _ = resolve(owner_name)
            except (ImportError, AttributeError):
                continue  # reported by the next test
            documented.setdefault(id(owner), set()).add(member)
    missing = []
    for key, cls in public_classes().items():
        for member in own_public_members(cls):
            if member not in documented.get(key, set()):
                missing.append(f"{cls.__module__}.{cls.__qualname__}.{member}")
    assert not missing, "docs/api.md has no entry for: " + ", ".join(sorted(missing))


def test_every_documented_name_exists_with_the_arguments_shown():
    problems = []
    count = 0
    for heading, entries in api_entries().items():
        for qualname, arglist in entries:
            count += 1
            try:
                obj, owner = resolve(qualname)
            except (ImportError, AttributeError) as exc:
                problems.append(f"{qualname} (under '## {heading}'): does not resolve ({exc})")
                continue
            if arglist is None:
                continue
            problem = _check_arguments(qualname, arglist, obj, owner)
            if problem:
                problems.append(problem)
    assert count > 300, f"only {count} entries parsed from docs/api.md: is the entry format intact?"
    assert not problems, "docs/api.md is out of date:\n" + "\n".join(problems)


def _check_arguments(qualname: str, arglist: str, obj: object, owner: object) -> str | None:
    if not callable(obj):
        return f"{qualname}{arglist}: documented with arguments but is not callable"
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return None  # a builtin without a signature: nothing to compare
    params = list(signature.parameters.values())
    if (isinstance(owner, type) and (inspect.isfunction(obj) or inspect.ismethoddescriptor(obj)) and params
            and params[0].name in ("self", "cls")):
        params = params[1:]  # a method looked up on its class (Python, or compiled: Stream.recv)
    documented = []
    for piece in split_arguments(arglist):
        if piece in ("*", "/"):
            continue
        name, _, default = piece.partition("=")
        documented.append((name.strip().lstrip("*"), default.strip() or None))
    actual = [p.name for p in params]
    if [name for name, _ in documented] != actual:
        return f"{qualname}{arglist}: the code's parameters are ({', '.join(actual)})"
    for (name, default), param in zip(documented, params):
        if default is None:
            if param.default is not inspect.Parameter.empty and param.kind not in (
                    param.VAR_POSITIONAL, param.VAR_KEYWORD):
                return f"{qualname}: parameter {name} has a default ({param.default!r}) the docs omit"
            continue
        try:
            value = ast.literal_eval(default)
        except (ValueError, SyntaxError):
            continue  # a name such as socket.SHUT_WR: not compared
        if param.default != value:
            return f"{qualname}: {name} defaults to {param.default!r}, the docs say {default}"
    return None


def test_every_console_script_is_documented():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    text = API.read_text()
    for script, target in scripts.items():
        assert f"`{script}`" in text, f"docs/api.md does not document the console script {script}"
        assert f"`{target}`" in text, f"docs/api.md does not say {script} runs {target}"


# ---------------------------------------------------------------------------
# design.md: the system-call table


def syscall_classes() -> set[type]:
    """Every SystemCall subclass threadlib defines under a public name of its
    module (per-network subclasses made at run time are left out)."""
    from threadlib.syscalls import SystemCall

    for name in PUBLIC_MODULES:
        importlib.import_module(name)
    found, todo = set(), [SystemCall]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            module = sys.modules.get(sub.__module__)
            if sub.__module__.startswith("threadlib") and getattr(module, sub.__name__, None) is sub:
                found.add(sub)
    return found


def syscall_table() -> dict[str, tuple[str, str]]:
    """system call name -> (served by, defined in), from design.md's table."""
    heading = next(h for h in sections(DESIGN) if "system call and the worker" in h)
    rows = {}
    for line in sections(DESIGN)[heading]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"`\w+`", cells[0]):
            rows[cells[0].strip("`")] = (cells[1].strip("`"), cells[2].strip("`"))
    return rows


def test_the_table_lists_every_system_call():
    table = syscall_table()
    names = {cls.__name__ for cls in syscall_classes()}
    assert len(names) >= 19
    missing = sorted(names - set(table))
    unknown = sorted(set(table) - names)
    assert not missing, f"docs/design.md's system-call table lacks rows for {missing}"
    assert not unknown, f"docs/design.md's system-call table lists {unknown}, which threadlib does not define"


def test_each_row_names_the_module_defining_the_call():
    classes = {cls.__name__: cls for cls in syscall_classes()}
    for name, (_, module) in syscall_table().items():
        assert classes[name].__module__ == module, \
            f"design.md says {name} is defined in {module}, it is in {classes[name].__module__}"


def test_each_row_names_the_worker_really_serving_the_call():
    from threadlib.io.aioworker import AioWorker
    from threadlib.io.tcpsockio import TcpWait
    from threadlib.lowlevel import Scheduler, default_workers
    from threadlib.process.signals import SignalWorker

    classes = {cls.__name__: cls for cls in syscall_classes()}
    table = syscall_table()
    sched = Scheduler(workers=default_workers() + [AioWorker(), SignalWorker()])
    from threadlib.loop import ThreadlibEventLoop

    loop = ThreadlibEventLoop(sched)  # attaches the loop's worker
    try:
        for name, (served_by, _) in table.items():
            cls = classes[name]
            if cls is TcpWait:
                continue  # served per network: the next test
            if served_by == "UringWorker":
                continue  # on an io_uring scheduler only: the next test but one
            owner = sched.worker_for(cls)
            if served_by == "Scheduler":
                assert owner is None and cls in sched._handlers, \
                    f"design.md says the scheduler serves {name}; it is {owner!r}"
            else:
                assert owner is not None, f"design.md says {served_by} serves {name}; nothing does"
                assert type(owner).__name__ == served_by, \
                    f"design.md says {served_by} serves {name}; {type(owner).__name__} does"
    finally:
        sched.run(_nothing())  # ends at once, closing the workers
        loop.close()


def test_the_io_uring_calls_are_served_by_the_uring_worker():
    from threadlib.lowlevel import Scheduler, UringWorker, uring_unavailable_reason, uring_workers

    reason = uring_unavailable_reason()
    if reason is not None:
        pytest.skip(f"io_uring unavailable here: {reason}")
    classes = {cls.__name__: cls for cls in syscall_classes()}
    rows = [name for name, (served_by, _) in syscall_table().items() if served_by == "UringWorker"]
    assert sorted(rows) == ["UringAccept", "UringRecv", "UringSend"]
    sched = Scheduler(workers=uring_workers())
    try:
        for name in rows:
            assert isinstance(sched.worker_for(classes[name]), UringWorker), name
    finally:
        sched.run(_nothing())


def test_tcp_wait_is_served_by_the_user_tcp_worker_of_each_network():
    """A UserNetwork registers its own subclass of TcpWait with its worker.
    The worker's attach only takes the device's fd for the poller, so a
    socket stands in for the TUN device: nothing is read or written, and
    no TUN device or root is needed."""
    from iolib.tcp import Stack
    from threadlib.io.tcpsockio import TcpWait, UserNetwork, UserTcpWorker
    from threadlib.lowlevel import Scheduler

    served_by, module = syscall_table()["TcpWait"]
    assert (served_by, module) == (UserTcpWorker.__name__, TcpWait.__module__)
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        networks = [UserNetwork(device, Stack(["10.77.0.2/24"], rng=random.Random(i)))
                    for i, (device, _) in enumerate(pairs)]
        sched = Scheduler()
        for net in networks:
            net.attach(sched)
        for net in networks:
            wait_class = net.worker.wait_class
            assert issubclass(wait_class, TcpWait) and wait_class is not TcpWait
            assert sched.worker_for(wait_class) is net.worker
            assert isinstance(net.worker, UserTcpWorker)
        assert networks[0].worker.wait_class is not networks[1].worker.wait_class
        sched.run(_nothing())
    finally:
        for pair in pairs:
            for sock in pair:
                sock.close()


def _nothing():
    return
    yield


# ---------------------------------------------------------------------------
# design.md: the worked example runs


def test_the_worked_example_of_a_new_system_call_and_worker_runs():
    heading = next(h for h in sections(DESIGN) if h.startswith("9.") or "Adding a system call" in h)
    text = DESIGN.read_text()
    start = text.index(f"## {heading}")
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert block, "design.md's 'Adding a system call and a worker' has no python example"
    namespace: dict = {"__name__": "design_example"}
    exec(compile(block.group(1), "docs/design.md example", "exec"), namespace)  # it asserts its own results
    assert namespace["sched"].worker_for(namespace["NextBeat"]) is namespace["heartbeat"]


# ---------------------------------------------------------------------------
# Links and removed things


DOCUMENTS = sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(path: pathlib.Path) -> set[str]:
    """The anchors GitHub makes for a Markdown file's headings: lower case,
    punctuation dropped, spaces made hyphens."""
    slugs = set()
    for heading in re.findall(r"^#+ (.+)$", path.read_text(), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        slugs.add(slug)
    return slugs


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_files_that_exist(path):
    broken = []
    for target in LINK.findall(path.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # a URL
        file_part, _, anchor = target.partition("#")
        linked = path.parent / file_part if file_part else path
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(target)
    assert not broken, f"{path.relative_to(ROOT)} has links to missing files or headings: {broken}"


def test_design_and_api_link_each_other_and_the_tcp_page():
    design, api = DESIGN.read_text(), API.read_text()
    assert "](api.md" in design and "](tcp-conformance.md" in design
    assert "](design.md" in api and "](tcp-conformance.md" in api
    assert "](../threadlib/_kernel/worker.py" in design


@pytest.mark.parametrize("path", [DESIGN, API, ROOT / "README.md"], ids=lambda p: p.name)
def test_no_reference_to_removed_or_external_things(path):
    text = path.read_text()
    for gone in ("DESIGN.md", "Scheduler.recorder", "sched.recorder"):
        assert gone not in text, f"{path.relative_to(ROOT)} mentions {gone}"
