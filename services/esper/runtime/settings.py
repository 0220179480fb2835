"""Config mixins for the dependencies a service may have. A service's config class lists
the ones it needs before ServerConfig, e.g.

    @dataclass(frozen=True)
    class UrzaConfig(PostgresSettings, KafkaSettings, ObjectStoreSettings, ServerConfig): ...
"""

from __future__ import annotations

from dataclasses import dataclass

from esper.runtime.config import ConfigError, check_address, check_url


@dataclass(frozen=True)
class PostgresSettings:
    # asyncpg DSN of the service's database.
    postgres_dsn: str = "postgresql://postgres@127.0.0.1:5432/esper"
    # Seconds to wait for the database at start before failing fast.
    postgres_connect_timeout: float = 5.0

    def validate(self) -> None:
        super().validate()  # type: ignore[misc]
        check_url("postgres_dsn", self.postgres_dsn, ("postgresql", "postgres"))
        if not 0 < self.postgres_connect_timeout <= 120:
            raise ConfigError("postgres_connect_timeout: must be within (0, 120] seconds")


@dataclass(frozen=True)
class KafkaSettings:
    # Comma-separated HOST:PORT list of the Oona broker(s).
    kafka_bootstrap: str = "127.0.0.1:9092"

    def validate(self) -> None:
        super().validate()  # type: ignore[misc]
        for address in self.kafka_bootstrap.split(","):
            check_address("kafka_bootstrap", address.strip())


@dataclass(frozen=True)
class ObjectStoreSettings:
    # S3-compatible endpoint URL of the kernel store.
    s3_endpoint: str = "http://127.0.0.1:9000"
    # Access key of the kernel store.
    s3_access_key: str = "esper"
    # Secret key of the kernel store.
    s3_secret_key: str = "esper-secret"
    # Bucket kernels are stored in (3-63 characters, S3 rules).
    s3_bucket: str = "esper-kernels"

    def validate(self) -> None:
        super().validate()  # type: ignore[misc]
        check_url("s3_endpoint", self.s3_endpoint, ("http", "https"))
        if not 3 <= len(self.s3_bucket) <= 63:
            raise ConfigError(f"s3_bucket: {self.s3_bucket!r} must be 3-63 characters long")


@dataclass(frozen=True)
class UrzaClientSettings:
    # HOST:PORT of Urza; empty disables calls to it.
    urza_address: str = "127.0.0.1:50051"

    def validate(self) -> None:
        super().validate()  # type: ignore[misc]
        if self.urza_address:
            check_address("urza_address", self.urza_address)
