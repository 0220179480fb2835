"""A PostgreSQL DSN's password never reaches a log line or a start-up error."""

from __future__ import annotations

import pytest

from esper.runtime.postgres import redact_dsn
from esper.runtime.server import StartupError
from esper.tezzeret import deps
from esper.tezzeret.config import TezzeretConfig

SECRET = "hunter2-s3cret"


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (f"postgresql://esper:{SECRET}@db:5432/esper", "postgresql://esper:***@db:5432/esper"),
        (f"postgresql://esper:{SECRET}@db/esper?sslmode=require",
         "postgresql://esper:***@db/esper?sslmode=require"),
        (f"postgresql://esper@db/esper?password={SECRET}&sslmode=require",
         "postgresql://esper@db/esper?password=***&sslmode=require"),
        (f"postgresql://db/esper?sslmode=disable&PASSWORD={SECRET}",
         "postgresql://db/esper?sslmode=disable&PASSWORD=***"),
        ("postgresql://esper@db/esper", "postgresql://esper@db/esper"),
        ("postgresql:///esper?host=/run/pg", "postgresql:///esper?host=/run/pg"),
    ],
)
def test_redact_dsn_hides_the_password_wherever_it_sits(dsn: str, expected: str) -> None:
    assert redact_dsn(dsn) == expected


async def test_tezzeret_start_up_error_names_the_dsn_without_its_password() -> None:
    # Port 1 on loopback refuses the connection at once: the start-up error path.
    config = TezzeretConfig(postgres_dsn=f"postgresql://esper:{SECRET}@127.0.0.1:1/esper",
                            postgres_connect_timeout=2.0)
    with pytest.raises(StartupError) as err:
        await deps.connect(config)
    message = str(err.value)
    assert message.startswith("postgres_dsn:")
    assert "esper:***@127.0.0.1:1/esper" in message
    assert SECRET not in message
