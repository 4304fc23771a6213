"""The Serf agent outlives libnet-agent; what a breaker found around it (issue 16):
a changed cluster key was silently ignored, and a Serf agent whose record was lost
was orphaned (the next start failed on its port)."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from libnet.cluster.agent import SerfAgent, SerfAgentConfig, _address_changed, find_serf
from libnet.errors import InvalidOption


def test_a_changed_cluster_key_is_refused_with_the_way_to_rotate(tmp_path) -> None:
    state = tmp_path / "serf"
    state.mkdir()
    (state / "keyring.json").write_text(json.dumps(["b29vb29vb29vb29vb29vb29vb29vb29vb29vb29vb28="]))
    cfg = SerfAgentConfig(
        node="h1", bind="203.0.113.11", state_dir=str(state), encrypt_key="bm5ubm5ubm5ubm5ubm5ubm5ubm5ubm5ubm5ubm5ubm4="
    )
    with pytest.raises(InvalidOption, match="serf keys -install"):
        SerfAgent(cfg)._check_keyring()
    SerfAgent(
        SerfAgentConfig(
            node="h1",
            bind="203.0.113.11",
            state_dir=str(state),
            encrypt_key="b29vb29vb29vb29vb29vb29vb29vb29vb29vb29vb28=",
        )
    )._check_keyring()


def test_an_unrecorded_serf_agent_of_ours_is_found(tmp_path) -> None:
    config = str(tmp_path / "serf.json")
    script = tmp_path / "agent"
    script.write_text("sleep 30\n")
    # argv as a serf agent's: "serf agent -config-file=<ours>"
    proc = subprocess.Popen(["serf", "agent", f"-config-file={config}"], executable="/bin/sh", cwd=tmp_path)
    try:
        deadline = time.monotonic() + 5  # the shell's argv is visible once it has exec'd
        while find_serf(config) != proc.pid and time.monotonic() < deadline:
            time.sleep(0.05)
        assert find_serf(config) == proc.pid
        assert find_serf(config + ".other") is None
    finally:
        proc.kill()
        proc.wait(10)


def test_an_address_change_is_detected(tmp_path) -> None:
    old = tmp_path / "serf.json"
    old.write_text(json.dumps({"bind": "203.0.113.13:7946", "advertise": "203.0.113.13:7946"}))
    assert not _address_changed(str(old), {"bind": "203.0.113.13:7946", "advertise": "203.0.113.13:7946"})
    assert _address_changed(str(old), {"bind": "203.0.113.13:7946", "advertise": "203.0.113.113:7946"})
    assert _address_changed(os.path.join(tmp_path, "missing.json"), {})
