"""The dependency files agree: every requirement has its tested version pinned in constraints.txt,
and that version satisfies the requirement's own bounds."""
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _lines(name: str) -> list[str]:
    out = []
    for raw in (ROOT / name).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def test_every_requirement_is_pinned_by_the_constraints_within_its_bounds():
    pins = {}
    for line in _lines("constraints.txt"):
        req = Requirement(line)
        (spec,) = req.specifier  # exactly one ==
        assert spec.operator == "==", line
        pins[canonicalize_name(req.name)] = spec.version
    for name in ("requirements.txt", "requirements-dev.txt", "requirements-weights.txt"):
        for line in _lines(name):
            req = Requirement(line)
            key = canonicalize_name(req.name)
            assert key in pins, f"{name}: {req.name} has no tested version in constraints.txt"
            assert req.specifier.contains(pins[key], prereleases=True), (
                f"{name}: {line} does not admit the tested {req.name}=={pins[key]}")
