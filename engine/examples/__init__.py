"""Request handlers that ship with engine, ready for ``engine serve``.

* :mod:`engine.examples.echo`: ``EchoHandler`` (lines, TCP or Unix stream) and
  ``EchoDatagramHandler`` (UDP or Unix datagram);
* :mod:`engine.examples.demo`: ``DemoHandler``, the line protocol ``engine`` serves
  when run without a command (``STATS`` shows which worker answered);
* :mod:`engine.examples.httpdir`: ``HttpDirHandler``, a static-file HTTP server.

For example ``engine serve engine.examples.echo:EchoHandler --bind 127.0.0.1:9000``.
"""
