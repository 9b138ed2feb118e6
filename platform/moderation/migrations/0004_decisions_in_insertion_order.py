"""Decisions are ordered newest first by insertion, not by the web server's
clock that stamped ``created``."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('moderation', '0003_decision_kept_after_submission_deleted'),
    ]

    operations = [
        migrations.AlterModelOptions(
            name='decision',
            options={'ordering': ('-pk',)},
        ),
    ]
