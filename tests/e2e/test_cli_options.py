"""``edged ctl`` options mean the same before and after the subcommand (issue 11, item 10)."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.e2e]


@pytest.mark.parametrize("where", ["before", "after"])
def test_ctl_options_before_or_after_the_subcommand_reach_the_named_daemon(daemon, sockdir, where):
    # The default endpoint leads nowhere: a command that ignored --control-endpoint
    # would time out (exit 8) instead of answering.
    daemon.env["EDGED_CONTROL_ENDPOINT"] = f"ipc://{sockdir}/nobody.sock"
    opts = ["--control-endpoint", daemon.control_endpoint, "--json", "--timeout", "30"]
    args = ["ctl", *opts, "versions"] if where == "before" else ["ctl", "versions", *opts]
    r = daemon.cli(*args)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model"] == "digits"
