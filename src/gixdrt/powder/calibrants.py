"""Calibrant and model phases: d-spacings from lattice constants and reflection conditions.

The lattice constants are facts from their sources (the NIST standard reference material certificates and
the crystallographic references named per phase, the same values pyFAI's calibrant files use); the list of
reflections follows from the lattice metric and the space group's reflection conditions:

- cubic ``1/d² = (h² + k² + l²)/a²``; tetragonal and orthorhombic ``1/d² = h²/a² + k²/b² + l²/c²``;
  hexagonal and rhombohedral (hexagonal axes) ``1/d² = 4(h² + hk + k²)/(3a²) + l²/c²``;
- conditions: ``P`` none; ``I`` h + k + l even; ``F`` h, k, l all even or all odd; ``Fd-3m`` (diamond) F and,
  when all even, h + k + l = 4n; ``R-3c`` (hexagonal axes, obverse) −h + k + l = 3n and, for the
  reflections with one of h, k, i = −(h + k) zero, l even; ``P6_3mc`` l even for the h h −2h l family (two of
  h, k, i equal) and for 0 0 0 l.

Reflections with the same d are merged into one ring (``multiplicity`` counts them, Friedel pairs included).
Only space-group conditions are applied, not structure-specific extinctions: that is what calibrant tables
list (a reflection may be allowed but weak).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["CALIBRANTS", "Phase", "d_spacings", "random_phase"]

_RULES = ("P", "I", "F", "Fd-3m", "R-3c", "P6_3mc")
_SYSTEMS = ("cubic", "tetragonal", "orthorhombic", "hexagonal")


@dataclass(frozen=True)
class Phase:
    """A crystalline phase: lattice constants in Å and a reflection rule (one of ``P I F Fd-3m R-3c P6_3mc``)."""

    name: str
    system: str  # cubic | tetragonal | orthorhombic | hexagonal (hexagonal axes also for rhombohedral)
    a: float
    rule: str = "P"
    b: float | None = None  # orthorhombic only
    c: float | None = None  # tetragonal, orthorhombic, hexagonal
    source: str = ""

    def __post_init__(self) -> None:
        if self.system not in _SYSTEMS:
            raise ValueError(f"Phase.system must be one of {_SYSTEMS}, got {self.system!r}")
        if self.rule not in _RULES:
            raise ValueError(f"Phase.rule must be one of {_RULES}, got {self.rule!r}")
        if self.system in ("tetragonal", "orthorhombic", "hexagonal") and not self.c:
            raise ValueError(f"Phase {self.name}: a {self.system} lattice needs c")
        if self.system == "orthorhombic" and not self.b:
            raise ValueError(f"Phase {self.name}: an orthorhombic lattice needs b")

    def scaled(self, factor: float) -> Phase:
        """The same phase with every lattice constant multiplied by ``factor`` (thermal expansion, strain)."""
        return Phase(
            self.name,
            self.system,
            self.a * factor,
            self.rule,
            None if self.b is None else self.b * factor,
            None if self.c is None else self.c * factor,
            self.source,
        )


# Lattice constants (Å) as certified / published; the names follow the pyFAI calibrant files.
CALIBRANTS: dict[str, Phase] = {
    p.name: p
    for p in (
        Phase("LaB6", "cubic", 4.156826, "P", source="NIST SRM 660c"),
        Phase("CeO2", "cubic", 5.411651, "F", source="NIST SRM 674b"),
        Phase("Si", "cubic", 5.431179, "Fd-3m", source="NIST SRM 640e"),
        Phase("alpha_Al2O3", "hexagonal", 4.759355, "R-3c", c=12.99231, source="NIST SRM 676a (2015)"),
        Phase("Ni", "cubic", 3.52387, "F", source="A. Taylor, J. Inst. Metals 77 (1950) 585"),
        Phase("Au", "cubic", 4.0782, "F", source="A. Maeland, T. B. Flanagan, Can. J. Phys. 42 (1964) 2364"),
        Phase("Al", "cubic", 4.0495, "F", source="W. Witt, Z. Naturforsch. A 22 (1967) 92"),
        Phase("NaCl", "cubic", 5.6401, "F", source="D. Walker et al., Am. Mineral. 89 (2004) 204"),
        Phase("ZnO", "hexagonal", 3.249897, "P6_3mc", c=5.20653, source="NIST SRM 674b"),
        Phase("Cr2O3", "hexagonal", 4.958979, "R-3c", c=13.59592, source="NIST SRM 674b"),
    )
}


def _allowed(h: np.ndarray, k: np.ndarray, l: np.ndarray, rule: str) -> np.ndarray:
    if rule == "P":
        return np.ones(h.shape, bool)
    if rule == "I":
        return (h + k + l) % 2 == 0
    par = [h % 2, k % 2, l % 2]
    same = (par[0] == par[1]) & (par[1] == par[2])
    if rule == "F":
        return same
    if rule == "Fd-3m":
        even = (par[0] == 0) & same
        return same & (~even | ((h + k + l) % 4 == 0))
    i = -(h + k)
    if rule == "R-3c":
        zero_type = (h == 0) | (k == 0) | (i == 0)
        return ((-h + k + l) % 3 == 0) & (~zero_type | (l % 2 == 0))
    if rule == "P6_3mc":
        two_equal = (h == k) | (k == i) | (h == i)
        return ~two_equal | (l % 2 == 0)
    raise ValueError(f"unknown reflection rule {rule!r}")


def d_spacings(phase: Phase, d_min: float, *, tol: float = 1e-7) -> tuple[np.ndarray, np.ndarray]:
    """Rings of ``phase`` with d ≥ ``d_min`` (Å): (d float64[R] descending, multiplicity int64[R]).

    Reflections whose d agree to ``tol`` relative are one ring."""
    if not d_min > 0:
        raise ValueError(f"d_min must be > 0, got {d_min!r}")
    a = phase.a
    b = phase.b or a
    c = phase.c or a
    hex_ = phase.system == "hexagonal"
    f = 2.0 if hex_ else 1.0  # the hexagonal metric reaches d_min at larger |h|, |k|
    hmax, kmax, lmax = (int(math.ceil(f * x / d_min)) + 1 for x in (a, b, c))
    h, k, l = np.meshgrid(
        np.arange(-hmax, hmax + 1), np.arange(-kmax, kmax + 1), np.arange(-lmax, lmax + 1), indexing="ij"
    )
    h, k, l = h.ravel(), k.ravel(), l.ravel()
    if hex_:
        inv_d2 = 4.0 * (h * h + h * k + k * k) / (3.0 * a * a) + l * l / (c * c)
    else:
        inv_d2 = h * h / (a * a) + k * k / (b * b) + l * l / (c * c)
    keep = (inv_d2 > 0) & (inv_d2 <= 1.0 / (d_min * d_min)) & _allowed(h, k, l, phase.rule)
    d = np.sort(1.0 / np.sqrt(inv_d2[keep]))[::-1]
    if d.size == 0:
        return d, np.zeros(0, np.int64)
    new = np.concatenate([[True], np.abs(np.diff(d)) > tol * d[1:]])
    starts = np.flatnonzero(new)
    mult = np.diff(np.append(starts, d.size))
    return d[starts].copy(), mult.astype(np.int64)


def random_phase(rng: np.random.Generator, name: str = "random", *, a_range: tuple[float, float] = (3.0, 12.0)) -> Phase:
    """A made-up phase: a random lattice (cubic, tetragonal, orthorhombic or hexagonal) with constants drawn
    log-uniformly from ``a_range`` (Å) and a rule that suits it, for ring sets no calibrant has."""
    lo, hi = math.log(a_range[0]), math.log(a_range[1])

    def draw() -> float:
        return float(math.exp(rng.uniform(lo, hi)))

    system = _SYSTEMS[int(rng.choice(4, p=[0.4, 0.2, 0.15, 0.25]))]
    if system == "cubic":
        return Phase(name, system, draw(), str(rng.choice(["P", "I", "F", "Fd-3m"])))
    if system == "tetragonal":
        return Phase(name, system, draw(), str(rng.choice(["P", "I"])), c=draw())
    if system == "orthorhombic":
        return Phase(name, system, draw(), str(rng.choice(["P", "I", "F"])), b=draw(), c=draw())
    return Phase(name, system, draw(), str(rng.choice(["P", "P6_3mc", "R-3c"])), c=draw() * 1.5)
