"""The infra suites' summary of their slowest commands (tests/infra/conftest.py) prints commands into CI's log: it must
show what ran without the passwords and tokens the suites pass to the target, however the shell quoted them."""

from __future__ import annotations

import sys

import pytest
from kilntest import ROOT, load

sys.path.insert(0, str(ROOT / "tests" / "infra"))  # conftest.py imports rootshell from beside it
infra = load("kiln_infra_conftest", ROOT / "tests" / "infra" / "conftest.py")


@pytest.mark.parametrize(
    ("command", "secret"),
    [
        ("REDISCLI_AUTH=s3cr3tpw redis-cli -h 127.0.0.1 -p 6379 INFO", "s3cr3tpw"),
        ("DJANGO_SUPERUSER_PASSWORD='a b c' timeout 90 python manage.py createsuperuser", "a b c"),
        # a value inside sh -c '...': quoted as '"'"'...'"'"', with a space in it (a session-31 CI log showed it)
        ("timeout 600 sh -c 'KILN_AUTH='\"'\"'Basic a2lsbjpwdw=='\"'\"' KILN_USER=u python3 x.py'", "a2lsbjpwdw=="),
        ("curl -H 'Authorization: Bearer tok3n-value' https://127.0.0.1/api/", "tok3n-value"),
        ("python3 -c 'import redis; redis.from_url(\"redis://:p4ss@127.0.0.1:6380/0\").ping()'", "p4ss"),
    ],
)
def test_a_printed_command_shows_no_password(command, secret):
    shown = infra.shown_command(command)
    assert secret not in shown, shown
    assert shown.split()[0] == command.split()[0] or "***" in shown, shown


def test_a_command_without_secrets_is_shown_whole():
    command = "timeout 900 sh -c 'kiln deploy /var/tmp/kiln-test-deploy/good 9.9.1-deploy-good'"
    assert infra.shown_command(command) == command
