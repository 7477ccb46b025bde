"""apps.webserver: a static-file HTTP/1.1 server in threaded style, one
user-level thread per connection.

    python -m apps.webserver [--root DIR] [--port 8080] [--io sendfile|aio]
                             [--workers N] [--stack kernel|user] [--access-log FILE]
                             [--tls-cert FILE --tls-key FILE [--tls-port P]]

``http`` reads requests (httptools) and builds responses, ``files`` maps
targets to files under the root and does the range and conditional-request
arithmetic, ``server`` runs the connections, ``wsgi`` serves a WSGI
application instead of files (``--wsgi MODULE:APP``, ``serve_wsgi``). The package never imports a
network stack directly beyond the default ``sockio.kernel``: the network
is a parameter.
"""

from .http import HttpError, Limits
from .server import SAMPLE_SITE, BackgroundServer, WebServer, user_network
from .wsgi import FileWrapper, WsgiAppError, serve_wsgi

__all__ = ["WebServer", "BackgroundServer", "Limits", "HttpError", "SAMPLE_SITE", "user_network", "serve_wsgi",
           "FileWrapper", "WsgiAppError"]
