"""The shared migration plumbing: which files count as migrations, and each ledger's DDL."""

from __future__ import annotations

import pytest

from esper.nissa import db as nissa_db
from esper.runtime.postgres import Migration, MigrationError, MigrationLedger, load_migrations
from esper.tezzeret import migrations as tezzeret_migrations
from esper.urza import db as urza_db


def test_load_migrations_in_version_order_skipping_other_files(tmp_path) -> None:
    (tmp_path / "0002_more.sql").write_text("SELECT 2")
    (tmp_path / "0001_first.sql").write_text("SELECT 1")
    (tmp_path / "README.md").write_text("not a migration")
    assert load_migrations(tmp_path) == [Migration(1, "first", "SELECT 1"), Migration(2, "more", "SELECT 2")]


def test_load_migrations_refuses_a_gap(tmp_path) -> None:
    (tmp_path / "0001_first.sql").write_text("SELECT 1")
    (tmp_path / "0003_third.sql").write_text("SELECT 3")
    with pytest.raises(MigrationError, match="migration 0002 is missing"):
        load_migrations(tmp_path)


def test_load_migrations_refuses_a_badly_named_file(tmp_path) -> None:
    (tmp_path / "1_first.sql").write_text("SELECT 1")
    with pytest.raises(MigrationError, match="1_first.sql: migration files are named NNNN_name.sql"):
        load_migrations(tmp_path)


def test_checksum_is_the_sha256_of_the_sql() -> None:
    assert Migration(1, "x", "").checksum == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_ledger_ddl_with_schema_and_checksums() -> None:
    ddl = MigrationLedger(table="s.schema_migrations", lock_key=1, schema="s").ddl()
    assert ddl.startswith("CREATE SCHEMA IF NOT EXISTS s;\nCREATE TABLE IF NOT EXISTS s.schema_migrations (")
    assert "checksum   text        NOT NULL" in ddl


def test_ledger_ddl_without_schema_or_checksums() -> None:
    ddl = MigrationLedger(table="t_schema_migrations", lock_key=1, checksums=False).ddl()
    assert ddl.startswith("CREATE TABLE IF NOT EXISTS t_schema_migrations (")
    assert "checksum" not in ddl and "SCHEMA" not in ddl


def test_each_service_keeps_its_ledger() -> None:
    """Existing databases hold these tables and lock keys: they must not move."""
    assert (urza_db.MIGRATION_LEDGER.table, urza_db.MIGRATION_LEDGER.lock_key) == (
        "urza.schema_migrations", 0x55525A41_0001)
    assert urza_db.MIGRATION_LEDGER.search_path == "urza"
    assert (nissa_db.MIGRATION_LEDGER.table, nissa_db.MIGRATION_LEDGER.lock_key) == (
        "nissa.schema_migrations", 0x4E495341_0001)
    assert nissa_db.MIGRATION_LEDGER.search_path is None
    ledger = tezzeret_migrations.MIGRATION_LEDGER
    assert (ledger.table, ledger.lock_key, ledger.schema, ledger.checksums) == (
        "tezzeret_schema_migrations", 0x7E2_2E7, None, False)
