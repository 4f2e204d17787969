"""In CI a skipped test fails the run unless it is marked ``never_in_ci(reason)``.

Each test runs pytest in a subprocess on a small file of tests that skip in every way there is,
with this folder's ``conftest.py`` (the hook lives there) and the markers ``pyproject.toml``
registers, and counts the outcomes with ``CI`` set and unset.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

HERE = Path(__file__).parent
PYPROJECT = HERE.parent / "pyproject.toml"

SKIPS = '''
import pytest


def test_passes():
    pass


@pytest.mark.skipif(True, reason="the tool is missing")
def test_skipif_mark():
    pass


def test_skip_in_body():
    pytest.skip("found nothing to test")


@pytest.fixture
def needs_module():
    pytest.importorskip("no_such_module_for_openfal")


def test_importorskip_in_fixture(needs_module):
    pass


@pytest.mark.never_in_ci("needs a GPU")
@pytest.mark.skipif(True, reason="no GPU here")
def test_marked_skip():
    pass


@pytest.mark.never_in_ci(reason="needs a GPU")
def test_marked_skip_in_body():
    pytest.skip("no GPU here")


@pytest.mark.never_in_ci(reason="needs a GPU")
class TestMarkedClass:
    def test_skips(self):
        pytest.skip("no GPU here")


@pytest.mark.never_in_ci("needs a GPU")
def test_marked_but_runs():
    pass


@pytest.mark.never_in_ci("")
@pytest.mark.skipif(True, reason="no GPU here")
def test_marked_without_a_reason():
    pass


@pytest.mark.xfail(reason="a known bug")
def test_expected_failure():
    assert False
'''


@pytest.fixture
def inner(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest((HERE / "conftest.py").read_text())
    for helper in HERE.glob("services*.py"):  # modules the conftest imports
        pytester.makepyfile(**{helper.stem: helper.read_text()})
    markers = tomllib.loads(PYPROJECT.read_text())["tool"]["pytest"]["ini_options"]["markers"]
    pytester.makeini("[pytest]\nmarkers =\n" + "".join(f"    {m}\n" for m in markers))
    return pytester


def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None,
        *args: str) -> pytest.RunResult:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    return pytester.runpytest_subprocess("-rfEs", "--strict-markers", "-p", "no:cacheprovider",
                                         *args)


def test_in_ci_only_marked_skips_skip(inner: pytest.Pytester,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    inner.makepyfile(test_skips=SKIPS)
    result = run(inner, monkeypatch, "true")
    # Skips in setup (marks, fixtures) become errors, in the test's body failures.
    result.assert_outcomes(passed=2, skipped=3, failed=1, errors=3, xfailed=1)
    result.stdout.fnmatch_lines([
        "FAILED test_skips.py::test_skip_in_body - skipped in CI (found nothing to test)*",
        "ERROR test_skips.py::test_skipif_mark - skipped in CI (the tool is missing): *"
        "never_in_ci(reason=...)*",
        "ERROR test_skips.py::test_importorskip_in_fixture - skipped in CI (could not import*",
        "ERROR test_skips.py::test_marked_without_a_reason - skipped in CI (no GPU here)*",
    ])
    # -rs lists the skips that stay, with their reasons (as scripts/test asks).
    skipped = [line for line in result.outlines if line.startswith("SKIPPED")]
    assert len(skipped) == 3, result.outlines
    assert all(line.endswith("no GPU here") for line in skipped), skipped
    assert result.ret == pytest.ExitCode.TESTS_FAILED


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_outside_ci_skips_skip(inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                               ci: str | None) -> None:
    inner.makepyfile(test_skips=SKIPS)
    result = run(inner, monkeypatch, ci)
    result.assert_outcomes(passed=2, skipped=7, xfailed=1)
    assert result.ret == pytest.ExitCode.OK


def test_in_ci_a_module_that_skips_is_a_collection_error(
        inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    inner.makepyfile(
        test_whole_module='import pytest\npytest.importorskip("no_such_module_for_openfal")\n',
        test_other="def test_passes():\n    pass\n")
    result = run(inner, monkeypatch, "1")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*skipped in CI (*no_such_module_for_openfal*"])
    assert result.ret == pytest.ExitCode.INTERRUPTED

    result = run(inner, monkeypatch, None)
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == pytest.ExitCode.OK
