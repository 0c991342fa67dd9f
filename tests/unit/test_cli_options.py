"""Every place argparse accepts a ctl option gives it the same meaning (issue 11, item 10)."""

from __future__ import annotations

import pytest

from edged.cli import build_parser, main

SUBCOMMANDS = [["status"], ["stats"], ["reload"], ["quit"], ["versions"], ["swap", "v2"], ["pin", "v2"],
               ["unmark", "v2"], ["power"], ["rollback"], ["unpin"]]


@pytest.mark.parametrize("sub", SUBCOMMANDS, ids=lambda s: s[0])
@pytest.mark.parametrize("where", ["before", "after"])
def test_ctl_options_parse_the_same_before_and_after_the_subcommand(sub, where):
    opts = ["--control-endpoint", "ipc:///tmp/x.sock", "--json", "--timeout", "3.5"]
    argv = ["ctl", *opts, *sub] if where == "before" else ["ctl", *sub, *opts]
    args = build_parser().parse_args(argv)
    assert (args.control_endpoint, args.json, args.timeout) == ("ipc:///tmp/x.sock", True, 3.5)


def test_ctl_defaults_apply_when_no_option_is_given(monkeypatch):
    monkeypatch.delenv("EDGED_TIMEOUT", raising=False)
    args = build_parser().parse_args(["ctl", "status"])
    assert (args.control_endpoint, args.json, args.timeout) == (None, False, 60.0)


def test_an_option_after_the_subcommand_wins_over_the_same_one_before():
    args = build_parser().parse_args(["ctl", "--timeout", "1", "status", "--timeout", "2"])
    assert args.timeout == 2.0


@pytest.mark.parametrize("count", ["0", "-3", "x"])
def test_ctl_events_count_must_be_a_positive_whole_number(count, capsys):
    # 0 used to mean "not given" (one event, or for ever with --follow).
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["ctl", "events", "--count", count])
    assert exit_.value.code == 2 and "--count" in capsys.readouterr().err
    assert build_parser().parse_args(["ctl", "events", "--count", "2"]).count == 2


@pytest.mark.parametrize("argv", [
    ["ctl", "status", "--timeout", "inf"], ["ctl", "--timeout", "nan", "status"], ["health", "--timeout", "-1"],
    ["ctl", "events", "--timeout", "1e300"], ["predict", "--deadline-ms", "nan", "x.npy"],
    ["predict", "--deadline-ms", "-5", "x.npy"],
])
def test_timeouts_and_deadlines_must_be_finite_and_in_range(argv, capsys):
    # inf and 1e300 ended in an OverflowError traceback, nan in "within nans", -1 waited for ever.
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and ("--timeout" in err or "--deadline-ms" in err) and "Traceback" not in err, err


@pytest.mark.parametrize("argv", [["ctl", "status"], ["health"]])
def test_a_bad_edged_timeout_is_a_usage_error_not_a_traceback(argv, monkeypatch, capsys):
    monkeypatch.setenv("EDGED_TIMEOUT", "abc")
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and "'abc' is not a number of seconds" in capsys.readouterr().err
    monkeypatch.setenv("EDGED_TIMEOUT", "2.5")
    assert build_parser().parse_args(argv).timeout == 2.5
