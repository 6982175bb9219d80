"""supervisord's launcher (provision/files/usr/local/lib/kiln/supervisord): supervisor 4.2 resolves the "module:attr"
specs of its config (rpcinterface factories, result handlers) with pkg_resources' EntryPoint; the launcher's stand-in
must resolve them the same way, and fail the same way (ImportError, which supervisor reports as "cannot be resolved
within [section]"; anything else would end supervisord with a traceback). The real supervisord through the launcher:
the nspawn tier (tests/provision/nspawn-check.sh) and tests/infra/test_restart.py."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os.path
import re
import sys
import xml.etree.ElementTree

import pytest
from kilntest import ROOT

LAUNCHER = ROOT / "provision" / "files" / "usr" / "local" / "lib" / "kiln" / "supervisord"
DROP_IN = ROOT / "provision" / "files" / "etc" / "systemd" / "system" / "supervisor.service.d" / "kiln.conf"
STEP = ROOT / "provision" / "steps" / "50-supervisor.sh"


@pytest.fixture(scope="module")
def launcher():
    loader = importlib.machinery.SourceFileLoader("kiln_supervisord_launcher", str(LAUNCHER))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def resolve(launcher, spec: str) -> object:
    # what supervisor.options.Options.import_spec does with the module it imported as pkg_resources
    ep = launcher.EntryPoint.parse("x=" + spec)
    return ep.resolve() if hasattr(ep, "resolve") else ep.load(False)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("os.path:join", os.path.join),  # Debian's supervisord.conf: supervisor.rpcinterface:make_main_rpcinterface
        ("xml.etree.ElementTree:Element.tag", xml.etree.ElementTree.Element.tag),  # a dotted attribute path
        ("json", json),  # no attribute: the module itself
        (" json : dumps ", json.dumps),  # spaces around the parts, as pkg_resources allows
    ],
)
def test_launcher_resolves_a_spec_to_the_object_it_names(launcher, spec, expected):
    assert resolve(launcher, spec) is expected


def test_a_spec_naming_a_missing_module_or_attribute_is_an_import_error_naming_it(launcher):
    with pytest.raises(ImportError, match="kiln_no_such_module"):
        resolve(launcher, "kiln_no_such_module:factory")
    # an AttributeError would escape supervisor's `except ImportError` and end supervisord with a traceback
    with pytest.raises(ImportError, match="no_such_factory"):
        resolve(launcher, "os.path:no_such_factory")


def test_a_malformed_spec_is_refused(launcher):
    with pytest.raises(ValueError, match="EntryPoint must be in"):
        resolve(launcher, "not a module:attr")


def test_the_launcher_stands_in_for_pkg_resources_only_where_it_is_not_loaded(launcher, monkeypatch):
    monkeypatch.delitem(sys.modules, "pkg_resources", raising=False)
    launcher.install()
    assert sys.modules["pkg_resources"].EntryPoint is launcher.EntryPoint
    real = object()
    monkeypatch.setitem(sys.modules, "pkg_resources", real)
    launcher.install()
    assert sys.modules["pkg_resources"] is real


def test_supervisor_service_runs_the_launcher_that_provisioning_installs():
    execs = re.findall(r"^ExecStart=(.*)$", DROP_IN.read_text(), re.M)
    assert execs == ["", "/usr/local/lib/kiln/supervisord -n -c /etc/supervisor/supervisord.conf"], execs
    assert "put usr/local/lib/kiln/supervisord 0755" in STEP.read_text()
    assert LAUNCHER.read_text().startswith("#!/usr/bin/python3 -I\n"), "the distro's python3, isolated"
