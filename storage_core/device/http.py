"""The gateway's HTTP as a device speaks it, shared by the upload client (client.py) and
the stream client (stream.py): one httpx client (base URL, bearer token, timeout), a lost
link mapped to a retryable GatewayError, and every answer read the same way:

    request ─> lost link?            GatewayError "cannot reach the gateway …" (retryable)
            ─> not 2xx?              the caller's refusal hook (its own error class), else
                                     GatewayError "gateway refused (STATUS): DETAIL" (5xx retryable)
            ─> not a JSON object,
               or without `keys`?    GatewayError "unexpected answer from the gateway …"
            ─> the answer, a dict

Every message is one line: a proxy's HTML page or a multi-line detail shows its first line.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import ssl
from collections.abc import Callable
from typing import Any

import httpx

from storage_core.errors import FerryError, GatewayError

log = logging.getLogger(__name__)

# a client's own refusals: (the refusal's JSON answer, its one-line detail) -> the error to
# raise, or None for a plain GatewayError
Refusal = Callable[[dict[str, Any], str], FerryError | None]

_warned_plain_http: set[str] = set()  # gateways already warned about, once per process


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def _warn_plain_http(url: httpx.URL) -> None:
    """A token sent in clear to another machine can be read on the way: say so, once."""
    if url.scheme == "http" and not _loopback(url.host) and str(url) not in _warned_plain_http:
        _warned_plain_http.add(str(url))
        log.warning("the device token is sent to %s over plain http, readable on the network; use https://", url)


@functools.cache
def _no_tls() -> ssl.SSLContext:
    """The TLS context of a client of a plain-http gateway: it trusts no certificate, and is
    never used (the client talks to its base URL only and follows no redirect). httpx's own
    default parses a whole CA bundle, ~25 ms of CPU for every client made."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The answer's body as a JSON object, or None (not JSON, or JSON but not an object)."""
    try:
        answer = response.json()
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


class GatewayHttp:
    """One gateway, as one device token sees it. `refusal` maps a non-2xx answer to a
    client's own error class (see the module docstring); thread-safe as httpx.Client is."""

    def __init__(self, base_url: str, token: str, *, timeout: float, refusal: Refusal | None = None) -> None:
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"), headers={"Authorization": f"Bearer {token}"}, timeout=timeout,
            verify=True if httpx.URL(base_url).scheme != "http" else _no_tls(),
        )
        self.refusal = refusal
        _warn_plain_http(self.http.base_url)

    @property
    def base_url(self) -> httpx.URL:
        return self.http.base_url

    def close(self) -> None:
        self.http.close()

    def unexpected(self, path: str, what: str) -> GatewayError:
        """An answer that is not the gateway's (a wrong URL, a proxy's page, another version)."""
        return GatewayError(f"unexpected answer from the gateway at {self.base_url} ({path}): {what}")

    def call(self, method: str, path: str, *, keys: tuple[str, ...] = (), **request: Any) -> dict[str, Any]:
        """The answer to one request (`request`: httpx's keywords), a JSON object holding
        `keys`; raises as the module docstring draws it."""
        try:
            response = self.http.request(method, path, **request)
        except httpx.TransportError as exc:
            raise GatewayError(f"cannot reach the gateway at {self.base_url}: {exc}", retryable=True) from exc
        if not response.is_success:
            raise self.refused(response)
        answer = _json_object(response)
        if answer is None:
            what = response.headers.get("content-type", "no content type")
            raise self.unexpected(path, f"{response.status_code} {what}, not a JSON object")
        missing = [k for k in keys if k not in answer]
        if missing:
            raise self.unexpected(path, f"no {', '.join(missing)}")
        return answer

    def refused(self, response: httpx.Response) -> FerryError:
        """The error for a non-2xx answer (its body read): the client's own, from its
        `refusal` hook, else GatewayError naming the status and the detail's first line
        (of the body's, when `detail` is not a string); 5xx are retryable."""
        answer = _json_object(response)
        detail = answer.get("detail") if answer is not None else None
        return self.error_for(response.status_code, answer, detail if isinstance(detail, str) else response.text[:200])

    def error_for(self, status: int, answer: dict[str, Any] | None, detail: str) -> FerryError:
        """The error for a refusal with `status`, its JSON `answer` (if any) and its `detail`
        (the first line is kept): the client's own, else GatewayError (5xx retryable)."""
        detail = (detail.strip().splitlines() or ["(no detail)"])[0]
        own = self.refusal(answer, detail) if self.refusal is not None and answer is not None else None
        if own is not None:
            return own
        return GatewayError(f"gateway refused ({status}): {detail}", status=status, retryable=status >= 500)


__all__ = ["GatewayHttp", "Refusal"]
