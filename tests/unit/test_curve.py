"""CURVE key files: generated safely, read as hostile input."""

from __future__ import annotations

import os
import stat

import pytest
import zmq

from edged import curve
from edged.curve import ClientKeys, KeyFileError, ServerKeys


def test_generate_writes_a_0600_secret_and_a_0644_public_file_readable_by_pyzmq(tmp_path):
    files = curve.generate(tmp_path / "k", "server")
    assert stat.S_IMODE(files.secret_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.public_path.stat().st_mode) == 0o644
    import zmq.auth

    assert zmq.auth.load_certificate(files.secret_path) == curve.read_key_pair(files.secret_path)
    assert zmq.auth.load_certificate(files.public_path)[0] == files.public == curve.read_public_key(files.public_path)
    assert "secret-key" not in files.public_path.read_text()


def test_generate_never_overwrites_and_refuses_path_names(tmp_path):
    curve.generate(tmp_path, "app")
    before = (tmp_path / "app.key_secret").read_bytes()
    with pytest.raises(KeyFileError, match="never overwritten"):
        curve.generate(tmp_path, "app")
    assert (tmp_path / "app.key_secret").read_bytes() == before
    for name in ("../x", ".hidden", ""):
        with pytest.raises(KeyFileError, match="plain file name"):
            curve.generate(tmp_path, name)


def test_a_secret_readable_by_others_or_a_mismatched_pair_is_refused(tmp_path):
    files = curve.generate(tmp_path, "server")
    os.chmod(files.secret_path, 0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        ServerKeys.from_file(files.secret_path)
    os.chmod(files.secret_path, 0o600)
    os.chmod(files.public_path, 0o600)
    with pytest.raises(KeyFileError, match="no secret-key"):
        curve.read_key_pair(files.public_path)
    other_public, _ = zmq.curve_keypair()
    text = files.secret_path.read_text().replace(files.public.decode(), other_public.decode())
    files.secret_path.write_text(text)
    with pytest.raises(KeyFileError, match="does not belong"):
        ServerKeys.from_file(files.secret_path)


def test_symlinks_fifos_and_garbage_are_refused(tmp_path):
    files = curve.generate(tmp_path / "k", "app")
    link = tmp_path / "link.key"
    link.symlink_to(files.public_path)
    with pytest.raises(KeyFileError, match="symlinks are refused"):
        curve.read_public_key(link)
    fifo = tmp_path / "fifo.key"
    os.mkfifo(fifo)
    with pytest.raises(KeyFileError, match="not a regular file"):  # and it did not hang
        curve.read_public_key(fifo)
    bad = tmp_path / "bad.key"
    bad.write_text('curve\n    public-key = "not-z85-and-too-short"\n')
    with pytest.raises(KeyFileError, match="40-character Z85"):
        curve.read_public_key(bad)
    bad.write_text("hello\n")
    with pytest.raises(KeyFileError, match="no public-key"):
        curve.read_public_key(bad)
    with pytest.raises(KeyFileError, match="does not exist"):
        curve.read_public_key(tmp_path / "missing.key")


def test_allowed_keys_directory(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir(mode=0o755)
    a = curve.generate(tmp_path, "a")
    b = curve.generate(tmp_path, "b")
    (allowed / "a.key").write_bytes(a.public_path.read_bytes())
    (allowed / "b.key").write_bytes(b.public_path.read_bytes())
    (allowed / "README").write_text("not a key\n")
    assert curve.read_allowed_keys(allowed) == {a.public, b.public}
    os.mkfifo(allowed / "trap.key")
    with pytest.raises(KeyFileError, match="not a regular file"):
        curve.read_allowed_keys(allowed)
    (allowed / "trap.key").unlink()
    os.chmod(allowed, 0o777)
    with pytest.raises(KeyFileError, match="others could add keys"):
        curve.read_allowed_keys(allowed)
    with pytest.raises(KeyFileError, match="No such file"):
        curve.read_allowed_keys(tmp_path / "nope")


def test_client_keys_never_show_the_secret(tmp_path):
    server = curve.generate(tmp_path, "server")
    app = curve.generate(tmp_path, "app")
    keys = ClientKeys.from_files(server.public_path, app.secret_path)
    assert keys.server_public == server.public and keys.public == app.public
    assert keys.secret.decode() not in repr(keys)
    with pytest.raises(KeyFileError, match="secret key file"):
        ClientKeys.from_files(server.public_path, app.public_path)


def test_cli_keys_generate(tmp_path, capsys):
    from edged import cli

    assert cli.main(["keys", "generate", "--dir", str(tmp_path), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"public_key"' in out and "secret-key" not in out
    assert stat.S_IMODE((tmp_path / "server.key_secret").stat().st_mode) == 0o600
    assert cli.main(["keys", "generate", "server", "--dir", str(tmp_path)]) == 7  # never overwrites
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["ctl", "status", "--server-key", str(tmp_path / "server.key")]) == 3  # a pair needs both
