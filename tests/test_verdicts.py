"""The verdict rule: the interval by hand, pairing by seed, the three outcomes and how parts combine."""
import doctest
import math

import pandas as pd
import pytest

from robustlib import verdicts
from robustlib.io import RobustlibError
from robustlib.verdicts import FAILS, HOLDS, INCONCLUSIVE, combine, compare, contrast, per_seed


def test_interval_by_hand():
    a, b = {0: 0.70, 1: 0.74, 2: 0.75}, {0: 0.50, 1: 0.52, 2: 0.51}
    d = [0.20, 0.22, 0.24]
    sd = pd.Series(d).std(ddof=1)
    seed_half = 4.302652729911275 * sd / math.sqrt(3)           # t(0.975, 2)
    test_half = 1.959963984540054 * math.sqrt((0.73 * 0.27 + 0.51 * 0.49) / 500)
    c = compare(a, b, images=500, label="x")
    assert c.diff == pytest.approx(0.22) and c.seeds == 3
    assert c.hi - c.diff == pytest.approx(math.hypot(seed_half, test_half))
    assert c.verdict == HOLDS and str(c).startswith("x +22.0 [")
    # without a count of test images, only seed noise
    assert compare(a, b, images=None).hi - 0.22 == pytest.approx(seed_half)


def test_pairs_only_the_seeds_both_have():
    c = compare({0: 0.8, 1: 0.8, 2: 0.8, 7: 0.1}, {0: 0.5, 1: 0.5, 2: 0.5}, images=None)
    assert c.seeds == 3 and c.diff == pytest.approx(0.3) and c.verdict == HOLDS


def test_three_outcomes_and_the_margin():
    up, down = {0: 0.6, 1: 0.61, 2: 0.62}, {0: 0.5, 1: 0.5, 2: 0.5}
    assert compare(up, down, images=None).verdict == HOLDS
    assert compare(down, up, images=None).verdict == FAILS
    assert compare({0: 0.4, 1: 0.6, 2: 0.5}, down, images=None).verdict == INCONCLUSIVE    # noise spans 0
    # non-inferiority: half a point lower is allowed, two points lower is not
    assert compare({0: 0.99, 1: 0.99}, {0: 0.992, 1: 0.992}, images=None, margin=-0.005).verdict == HOLDS
    assert compare({0: 0.97, 1: 0.97}, {0: 0.99, 1: 0.99}, images=None, margin=-0.005).verdict == FAILS


def test_one_seed_is_never_a_verdict():
    c = compare({0: 0.9}, {0: 0.1}, images=10_000)
    assert c.verdict == INCONCLUSIVE and c.seeds == 1 and "no interval: 1 seed" in str(c)
    assert compare({0: 0.9}, {1: 0.1}, images=None).seeds == 0


def test_contrast_weights():
    r0, r3, r1 = {0: 0.5, 1: 0.5}, {0: 0.68, 1: 0.68}, {0: 0.7, 1: 0.7}
    c = contrast([(1, r3), (-0.25, r0), (-0.75, r1)], images=None)
    assert c.diff == pytest.approx(0.68 - 0.125 - 0.525) and c.verdict == HOLDS


def test_combine():
    h, f, i = (verdicts.Comparison("", 0, 0, 0, 3, 0, v) for v in (HOLDS, FAILS, INCONCLUSIVE))
    assert combine([h, h]) == HOLDS and combine([h, i]) == INCONCLUSIVE and combine([h, i, f]) == FAILS
    assert combine([]) == INCONCLUSIVE


def test_per_seed_reads_a_table():
    df = pd.DataFrame({"method": ["A", "B", "A"], "acc": [0.1, 0.2, 0.3], "seed": [0, 0, 1]})
    assert per_seed(df, "method", "A", "acc").to_dict() == {0: 0.1, 1: 0.3}
    assert per_seed(df.drop(columns="seed"), "method", "B", "acc").to_dict() == {0: 0.2}


def test_docstring_example():
    assert doctest.testmod(verdicts).failed == 0


def test_an_ablations_reading_says_what_differs_beyond_the_noise_and_only_that():
    import pandas as pd

    from robustlib.io import RobustlibError

    df = pd.DataFrame({"method": ["ref"] * 3 + ["a"] * 3 + ["b"] * 3, "seed": [0, 1, 2] * 3,
                       "natural": [.90, .91, .92, .90, .91, .93, .85, .86, .87],
                       "pgd@0.1": [.50, .52, .51, .60, .61, .62, .50, .51, .52], "images": [360] * 9})
    text = verdicts.reading(df, "ref", {"natural": "natural accuracy", "pgd@0.1": "robust accuracy"})
    assert ("- *a* (3 seeds): natural accuracy +0.3 [-4.1, +4.7], not distinguishable; robust accuracy +10.0 "
            "[+2.4, +17.6], higher") in text
    assert ("Beyond the noise: *a*, robust accuracy: higher (+10.0 [+2.4, +17.6]); *b*, natural accuracy: lower "
            "(-5.0 [") in text and "That is 2 of 4 comparisons, each at 95%" in text
    assert "seed and test-sample noise" in text
    assert verdicts.points(-1e-12) == "+0.0" and verdicts.points(-0.0123) == "-1.2"    # never a -0.0
    same = df.assign(natural=[.90, .91, .92] * 3, **{"pgd@0.1": [.5, .52, .51] * 3})
    assert "Every interval contains 0" in verdicts.reading(same, "ref", {"natural": "n"})
    assert "seed noise where" in verdicts.reading(same.drop(columns="images"), "ref", {"natural": "n"})
    assert "With one seed there is no interval" in verdicts.reading(df[df.seed == 0], "ref", {"natural": "n"})
    with pytest.raises(RobustlibError, match="no method 'reff' in the table"):
        verdicts.reading(df, "reff", {"natural": "n"})


def test_paper_gaps_reads_each_column_against_the_paper():
    from robustlib import paper
    ref = paper.TABLE_III.rename(columns={c: f"paper {c}" for c in paper.TABLE_III.columns if c != "method"})
    ours = paper.TABLE_III.copy()
    ours.loc[ours.method == "Ours", "pgd@8/255"] -= 0.05             # 5 points below the paper on one cell
    text = verdicts.paper_gaps(ours.merge(ref, on="method"))
    assert "over the 4 rows" in text and "in pgd@8/255 of Ours (-5.0)" in text
    assert "natural +0.0" in text and "pgd@8/255 -5.0 to +0.0" in text
    none = ours.assign(**{f"paper {c}": float("nan") for c in ("natural", "pgd@2/255", "pgd@5/255", "pgd@8/255")})
    assert "None of these rows" in verdicts.paper_gaps(none[[*ours.columns, *[c for c in none.columns if c.startswith("paper")]]])
    with pytest.raises(RobustlibError, match="paper <name>"):
        verdicts.paper_gaps(ours)


def test_format_percent_shows_accuracies_as_percent_and_leaves_the_rest():
    from robustlib.evaluate import format_percent
    df = pd.DataFrame({"method": ["a"], "natural": [0.9912], "pgd@0.1": [0.5], "beta": [0.1], "ratio": [1204.7]})
    html = format_percent(df).to_html()
    assert "99.1%" in html and "50.0%" in html and ">0.1<" in html and "1.2e+03" in html and "10.0%" not in html
