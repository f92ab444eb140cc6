"""``FPGALAB_REDIS_PASSWORD_FILE``: the lab reaches a Redis that requires a password with
the one in the file, and refuses a password given twice or a file it cannot read as one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from redis.exceptions import AuthenticationError

from fpgalab.service.settings import Settings
from fpgalab.service.store import Store
from tests.helpers import RedisServer

PASSWORD = "redis-pw-94d1c7ab20"


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server started with ``--requirepass``."""
    server = RedisServer(tmp_path_factory.mktemp("locked-redis"), password=PASSWORD).start()
    yield server
    server.stop()


def password_file(folder: Path, text: str) -> Path:
    path = folder / "redis-password"
    path.write_text(text)
    path.chmod(0o600)
    return path


async def test_the_store_is_let_in_with_the_password_file_and_refused_without(
    locked_redis: RedisServer, tmp_path: Path
) -> None:
    """A store made with FPGALAB_REDIS_PASSWORD_FILE answers PING; one without it is
    refused by Redis."""
    url = locked_redis.url
    settings = Settings(redis_url=url, redis_password_file=password_file(tmp_path, PASSWORD + "\n"))
    store = Store.from_url(url, settings)
    try:
        assert await store.ping()
    finally:
        await store.close()
    anonymous = Store.from_url(url, Settings(redis_url=url))
    try:
        with pytest.raises(AuthenticationError):
            await anonymous.ping()
    finally:
        await anonymous.close()


def test_a_password_in_the_url_and_in_a_file_is_refused_without_showing_it(
    tmp_path: Path,
) -> None:
    """A Redis URL with a password and a password file together are refused (redis-py
    would silently prefer the URL's), and the message shows neither password."""
    with pytest.raises(ValidationError) as refused:
        Settings(
            redis_url="redis://:url-pw-5e0f@127.0.0.1:6379/0",
            redis_password_file=password_file(tmp_path, PASSWORD),
        )
    assert "password too" in str(refused.value)
    assert "url-pw-5e0f" not in str(refused.value) and PASSWORD not in str(refused.value)


@pytest.mark.parametrize("text", ["", "\n", f"{PASSWORD}\nsecond-line\n"],
                         ids=["empty", "blank", "two-lines"])  # fmt: skip
def test_a_password_file_must_hold_the_password_alone_on_one_line(
    tmp_path: Path, text: str
) -> None:
    """An empty password file, or one of several lines, is refused naming the file and
    not its content."""
    path = password_file(tmp_path, text)
    with pytest.raises(ValueError, match="alone on one line") as refused:
        Settings(redis_password_file=path).redis_password()
    assert str(path) in str(refused.value) and "second-line" not in str(refused.value)
