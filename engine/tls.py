"""The server's TLS context, built once in the master from the TLS settings.

The master builds it before forking (and before dropping privileges, so a key file
only root can read still works); every worker inherits the same context, so TLS session
tickets issued by one worker are accepted by its siblings. A bad certificate, key or CA
file stops the start-up with a :class:`~engine.errors.ConfigError` naming the setting.

Python API: a server's ``ssl_context`` attribute, when it is an ``ssl.SSLContext``, is
used as it is and the certificate settings (``certfile``, ``keyfile``, ``ca_certs``,
``tls_verify_client``, ``tls_min_version``, ``tls_ciphers``) are ignored. A server whose
listening socket is already an ``ssl.SSLSocket`` (it wrapped the listener itself, as
Werkzeug's development server does) gets no second TLS layer.
"""

from __future__ import annotations

import re
import ssl
from typing import Any

from engine import privileges
from engine.config import Settings
from engine.errors import ConfigError

MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
VERIFY_MODES = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


def server_context(settings: Settings, server: Any = None) -> ssl.SSLContext | None:
    """The context to serve TLS with: *server*'s ``ssl_context``, one built from
    *settings* (when ``certfile`` is set), or None (plain connections).

    Raises:
        engine.errors.ConfigError: a file is missing, unreadable or not what it
            should be, or ``ssl_context`` is not an ``ssl.SSLContext``.
    """
    if isinstance(getattr(server, "socket", None), ssl.SSLSocket):
        return None  # the server made its listener TLS itself: never wrap twice
    given = getattr(server, "ssl_context", None)
    if isinstance(given, ssl.SSLContext):
        return given
    if given is not None:
        raise ConfigError("ssl_context", given, "an ssl.SSLContext, or None")
    if settings.certfile is None:
        return None
    return build_context(settings)


def build_context(settings: Settings) -> ssl.SSLContext:
    """A server-side context from the TLS settings (``certfile`` must be set).

    Raises:
        engine.errors.ConfigError: naming ``certfile``, ``keyfile``, ``ca_certs`` or
            ``tls_ciphers``, with the value and what is allowed.
    """
    assert settings.certfile is not None
    if settings.user:
        # Before the key is in memory: a master that starts as the service user (the
        # new master of an upgrade) is dumpable until it says otherwise.
        privileges.keep_memory_private()
    # PROTOCOL_TLS_SERVER, not create_default_context(): the latter would trust the
    # system CAs for client certificates when ca_certs is unset.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_VERSIONS[settings.tls_min_version]
    _load_chain(context, settings.certfile, settings.keyfile)
    if settings.ca_certs is not None:
        _load_ca(context, settings.ca_certs)
    context.verify_mode = VERIFY_MODES[settings.tls_verify_client]
    if settings.tls_ciphers is not None:
        try:
            context.set_ciphers(settings.tls_ciphers)
        except ssl.SSLError:
            raise ConfigError(
                "tls_ciphers", settings.tls_ciphers,
                "an OpenSSL cipher list that selects at least one cipher",
            ) from None
    return context


def _load_chain(context: ssl.SSLContext, certfile: str, keyfile: str | None) -> None:
    _check_readable("certfile", certfile)
    if keyfile is not None:
        _check_readable("keyfile", keyfile)
    # Certificates alone first, so a bad certificate and a bad key are told apart.
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=certfile)
    except ssl.SSLError as exc:
        raise ConfigError(
            "certfile", certfile, f"a PEM certificate (chain) file ({_why(exc)})"
        ) from None
    try:
        # A password callback, so an encrypted key fails instead of prompting on a tty.
        context.load_cert_chain(certfile, keyfile, password=_no_password)
    except (ssl.SSLError, ValueError, TypeError) as exc:
        if keyfile is None:
            raise ConfigError(
                "certfile", certfile, "a PEM certificate followed by its unencrypted "
                f"private key, or set keyfile ({_why(exc)})",
            ) from None
        raise ConfigError(
            "keyfile", keyfile,
            f"the unencrypted PEM private key of certfile's certificate ({_why(exc)})",
        ) from None


def _load_ca(context: ssl.SSLContext, ca_certs: str) -> None:
    _check_readable("ca_certs", ca_certs)
    try:
        context.load_verify_locations(cafile=ca_certs)
    except ssl.SSLError as exc:
        raise ConfigError(
            "ca_certs", ca_certs, f"a file of PEM CA certificates ({_why(exc)})"
        ) from None


def _check_readable(setting: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(
            setting, path, f"a readable PEM file ({exc.strerror or exc})"
        ) from None


def _no_password() -> bytes:
    return b""


def _why(exc: Exception) -> str:
    """OpenSSL's reason, without the ``[SSL]`` library tag and the _ssl.c line."""
    reason = getattr(exc, "reason", None) or (
        exc.args[1] if len(exc.args) > 1 else str(exc)
    )
    return "OpenSSL: " + re.sub(r"^\[\w+\]\s*|\s*\(_ssl\.c:\d+\)$", "", str(reason))
