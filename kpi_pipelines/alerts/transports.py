"""Sending one rendered `Message` to one channel: Slack (slack_sdk), webhook (urllib), e-mail
(smtplib), or the log. A transport either returns `Sent` or raises `DeliveryError`
(carrying the server's Retry-After when it gave one); the outbox decides what happens next.
"""

from __future__ import annotations

import email.message
import json
import logging
import smtplib
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kpi_pipelines.alerts.config import AlertSettings
from kpi_pipelines.alerts.messages import Message
from kpi_pipelines.alerts.rules import Channel

logger = logging.getLogger("kpi_pipelines.alerts")


class DeliveryError(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Sent:
    channel_type: str  # slack | webhook | email | log
    destination: str
    message_id: str | None = None


def _retry_after(headers: Mapping[str, object] | None) -> float | None:
    if not headers:
        return None
    for key, value in headers.items():
        if str(key).lower() == "retry-after":
            value = value[0] if isinstance(value, (list, tuple)) else value
            try:
                return max(0.0, float(str(value).strip()))
            except ValueError:
                return None
    return None


class Pacer:
    """At most one message per `interval` seconds per destination (Slack: one a second per
    channel). `sleep` and `clock` are injectable so tests do not wait."""

    def __init__(self, interval: float = 1.0, sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.sleep = sleep
        self.clock = clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def wait(self, destination: str) -> None:
        with self._lock:
            last = self._last.get(destination)
            if last is not None:
                delay = last + self.interval - self.clock()
                if delay > 0:
                    self.sleep(delay)
            self._last[destination] = self.clock()


class LogTransport:
    """No Slack token (or no SMTP host): the notification goes to the Python log, and the
    notification log records it with channel_type 'log'."""

    def __init__(self, log: logging.Logger | None = None):
        self.log = log or logger

    def send(self, channel: Channel, message: Message) -> Sent:
        self.log.warning("alert notification for %s (%s %s):\n%s", channel.name, channel.type, channel.target, message.text)
        return Sent("log", channel.target, message.key)


class SlackTransport:
    """`chat.postMessage` through slack_sdk's WebClient, with its RateLimitErrorRetryHandler
    (off by default in slack_sdk: it sleeps for Retry-After and tries again) and pacing."""

    def __init__(
        self,
        token: str,
        base_url: str,
        pacer: Pacer | None = None,
        rate_limit_retries: int = 1,
        timeout: int = 10,
    ):
        from slack_sdk import WebClient
        from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

        self.client = WebClient(
            token=token,
            base_url=base_url,
            timeout=timeout,
            retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=rate_limit_retries)],
        )
        self.pacer = pacer or Pacer()

    def send(self, channel: Channel, message: Message) -> Sent:
        from slack_sdk.errors import SlackApiError

        self.pacer.wait(channel.target)
        try:
            response = self.client.chat_postMessage(
                channel=channel.target, text=message.text, blocks=message.blocks, unfurl_links=False, unfurl_media=False
            )
        except SlackApiError as error:
            status = getattr(error.response, "status_code", None)
            code = error.response.get("error") if hasattr(error.response, "get") else None
            retry = _retry_after(getattr(error.response, "headers", None)) if status == 429 else None
            raise DeliveryError(f"Slack answered {status}: {code or error}", retry) from None
        except Exception as error:  # connection refused, timeouts, bad URL
            raise DeliveryError(f"Slack unreachable: {type(error).__name__}: {error}") from None
        return Sent("slack", channel.target, str(response.get("ts") or ""))


class WebhookTransport:
    """A JSON POST; 429, 5xx and connection errors are retried `retries` times with
    exponential backoff (or the server's Retry-After, up to `max_wait`)."""

    def __init__(
        self,
        timeout: float = 10,
        retries: int = 2,
        backoff: float = 0.5,
        max_wait: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_wait = max_wait
        self.sleep = sleep

    def send(self, channel: Channel, message: Message) -> Sent:
        body = json.dumps(message.payload, default=str).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "kpi-pipelines-alerts/1",
            "X-KPI-Notification-Key": message.key,  # receivers may deduplicate (at-least-once delivery)
            **dict(channel.headers),
        }
        problem, retry_after = "", None
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(channel.target, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read()
                    return Sent("webhook", channel.target, message.key)
            except urllib.error.HTTPError as error:
                retry_after = _retry_after(dict(error.headers.items()) if error.headers else None)
                problem = f"webhook answered {error.code}"
                if error.code != 429 and error.code < 500:
                    raise DeliveryError(problem) from None
            except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as error:
                reason = getattr(error, "reason", error)
                problem, retry_after = f"webhook unreachable: {reason}", None
            if attempt == self.retries:
                break
            wait = retry_after if retry_after is not None else self.backoff * (2**attempt)
            if wait > self.max_wait:
                break  # the outbox tries again after Retry-After
            self.sleep(wait)
        raise DeliveryError(problem, retry_after)


class EmailTransport:
    def __init__(self, host: str, port: int, sender: str, user: str = "", password: str = "", starttls: bool = False, timeout: float = 10):
        self.host, self.port, self.sender = host, port, sender
        self.user, self.password, self.starttls, self.timeout = user, password, starttls, timeout

    def send(self, channel: Channel, message: Message) -> Sent:
        mail = email.message.EmailMessage()
        mail["Subject"] = message.subject
        mail["From"] = self.sender
        mail["To"] = ", ".join(channel.recipients)
        mail["X-KPI-Notification-Key"] = message.key
        mail.set_content(message.text + "\n")
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                smtp.ehlo()
                if self.starttls:
                    smtp.starttls()
                    smtp.ehlo()
                if self.user:
                    smtp.login(self.user, self.password)
                refused = smtp.send_message(mail)
        except (smtplib.SMTPException, OSError) as error:
            raise DeliveryError(f"SMTP {self.host}:{self.port}: {type(error).__name__}: {error}") from None
        if refused and len(refused) == len(channel.recipients):
            raise DeliveryError(f"SMTP refused every recipient: {refused}")
        return Sent("email", channel.target, message.key)


class Transports:
    """The transport for each channel type, per the settings: Slack without a token and
    e-mail without an SMTP host go to the log."""

    def __init__(
        self,
        settings: AlertSettings,
        pacer: Pacer | None = None,
        webhook: WebhookTransport | None = None,
        slack_rate_limit_retries: int = 1,
        log: logging.Logger | None = None,
    ):
        self.log = LogTransport(log)
        self.slack = (
            SlackTransport(settings.slack_token, settings.slack_base_url, pacer, slack_rate_limit_retries)
            if settings.slack_token
            else None
        )
        self.webhook = webhook or WebhookTransport()
        self.email = (
            EmailTransport(
                settings.smtp_host, settings.smtp_port, settings.smtp_from, settings.smtp_user,
                settings.smtp_password, settings.smtp_starttls,
            )
            if settings.smtp_host
            else None
        )

    def for_channel(self, channel: Channel):
        if channel.type == "slack":
            return self.slack or self.log
        if channel.type == "webhook":
            return self.webhook
        if channel.type == "email":
            return self.email or self.log
        return self.log
