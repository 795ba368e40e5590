"""The HTTP layer every client shares: httpx with the bearer key, the CA bundle for HTTPS, and
retries with backoff for a server that is restarting or briefly away."""

import logging
import time

import httpx

logger = logging.getLogger(__name__)


class GeneratorError(RuntimeError):
    """The generator answered with an error (``status``), or could not be reached (``status`` None);
    the message says which."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RetryingHttp:
    """httpx with the bearer key and, for HTTPS, the CA bundle that signed the server's certificate;
    transport errors (refused, reset, timed out) and 5xx answers are retried with exponential
    backoff (1, 2, 4 … 30 s, each retry logged) for up to ``retry_seconds``, then raised; a 4xx is
    raised at once (the request itself is wrong)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        ca_bundle: str | None = None,
        timeout: float = 1800.0,
        retry_seconds: float = 300.0,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url
        self.retry_seconds = retry_seconds
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, verify=ca_bundle or True)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, retry: bool = True, **arguments) -> httpx.Response:
        started, delay, attempt = time.monotonic(), 1.0, 0
        while True:
            attempt += 1
            try:
                response = self.http.request(method, path, **arguments)
                status, problem = response.status_code, f"{response.status_code}: {response.text[:2000]}"
            except httpx.TransportError as error:
                response, status, problem = None, None, f"{type(error).__name__}: {error}"
            if response is not None and status < 400:
                return response
            if status is not None and status < 500:
                raise GeneratorError(f"{method} {self.base_url}{path} → {problem}", status=status)
            waited = time.monotonic() - started
            if not retry or waited + delay > self.retry_seconds:
                raise GeneratorError(
                    f"{method} {self.base_url}{path}: {problem}"
                    + (f" (gave up after {attempt} attempts over {waited:.0f} s)" if retry else ""),
                    status=status,
                )
            logger.warning(
                "%s %s%s failed (%s); retry %d in %.0f s", method, self.base_url, path, problem[:200], attempt, delay
            )
            time.sleep(delay)
            delay = min(2 * delay, 30.0)
