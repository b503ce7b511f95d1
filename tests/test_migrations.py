from podfn_platform import migrations
from podfn_platform.database import Database


def _schema(db: Database) -> list[tuple[str, str, str]]:
    with db.transaction() as tx:
        rows = tx._conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY 1, 2").fetchall()
    return [(r["table_name"], r["column_name"], r["data_type"]) for r in rows]


def test_applies_every_migration_once_and_twice_changes_nothing(empty_database_url: str) -> None:
    with Database(empty_database_url) as db:
        assert [m.version for m in migrations.pending(db)] == [
            m.version for m in migrations.available()]
        applied = migrations.apply(db)
        assert [m.version for m in applied] == [m.version for m in migrations.available()]
        schema = _schema(db)
        assert ("podfn_calls", "state", "text") in schema
        assert migrations.apply(db) == []
        assert migrations.pending(db) == []
        assert _schema(db) == schema
        rows = db.all("get_state", {"key": "nothing"})
        assert rows == []


def test_migration_numbers_are_unique_and_ordered() -> None:
    versions = [m.version for m in migrations.available()]
    assert versions == sorted(set(versions)) and versions[0] == 1
