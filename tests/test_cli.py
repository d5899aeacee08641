"""The jaxsched console script."""

import importlib.metadata
import os
import subprocess
import sys

from jaxsched import cli


def test_info_lists_versions_and_targets(capsys):
  assert cli.main(["info"]) == 0
  out = capsys.readouterr().out
  assert f"jax                {importlib.metadata.version('jax')}" in out
  assert "h100" in out and "tpu-v5e" in out and "available" in out
  assert "device     0:" in out


def test_console_script_is_installed():
  exe = os.path.join(os.path.dirname(sys.executable), "jaxsched")
  res = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
  assert res.returncode == 0, res.stderr
  assert "info" in res.stdout
