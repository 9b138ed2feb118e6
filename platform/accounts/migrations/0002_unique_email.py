"""One account per e-mail address, whatever its case, kept by the database.

The sign-up form checks the address first, but two sign-ups posted at the
same moment both passed that check and made two accounts for one address,
and a password reset for it then mailed links for both. A unique index on
the lower-cased address (empty addresses left out: accounts made by
``createsuperuser`` may have none) closes that race on SQLite and Postgres
alike. A database that already holds such duplicates stops the migration
with their addresses, for an administrator to resolve (the admin's user form
checks the same rule, accounts/admin.py).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import migrations

INDEX = "accounts_user_email_ci_unique"


def _table(apps: Any) -> str:
    app, model = settings.AUTH_USER_MODEL.split(".")
    return str(apps.get_model(app, model)._meta.db_table)


def create(apps: Any, schema_editor: Any) -> None:
    quote = schema_editor.quote_name
    table = quote(_table(apps))
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            f"SELECT LOWER(email) FROM {table} WHERE email <> '' "  # noqa: S608 (names, quoted)
            "GROUP BY LOWER(email) HAVING COUNT(*) > 1"
        )
        shared = [row[0] for row in cursor.fetchall()]
    if shared:
        raise RuntimeError(
            f"{len(shared)} e-mail address(es) belong to more than one account "
            f"({', '.join(shared[:10])}); give each account its own address (or none), "
            "e.g. in `python manage.py shell` (Docker: `docker compose run --rm web python "
            "manage.py shell`), then migrate again."
        )
    schema_editor.execute(
        f"CREATE UNIQUE INDEX {quote(INDEX)} ON {table} (LOWER(email)) WHERE email <> ''"
    )


def drop(apps: Any, schema_editor: Any) -> None:
    schema_editor.execute(f"DROP INDEX {schema_editor.quote_name(INDEX)}")


class Migration(migrations.Migration):
    # After auth's last migration: on SQLite an altered column rebuilds the
    # table, and with it every index Django's models do not declare.
    dependencies = [
        ("accounts", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [migrations.RunPython(create, drop)]
