"""The compiled seeded draws (fedsim.core.seeded_kernels) are numpy's: the asynchronous loop draws its
selections, availability, dropouts and tie-breaks with them, and a run's tables must not depend on
which of the two made a number."""

import numpy as np
import pytest

from fedsim.core import seeded


def entropies(n: int, seed: int = 5):
    """Entropy tuples as the loop makes them (seed, key, a constant) and harder ones: zeros, ints of
    several 32-bit words, long tuples (more words than SeedSequence's pool of four)."""
    rng = np.random.default_rng(seed)
    for trial in range(n):
        if trial % 25 == 0:
            yield (0, 0, 0xA7A1)
        elif trial % 7 == 0:
            yield tuple(int(rng.integers(0, 2**63)) for _ in range(int(rng.integers(1, 7))))
        else:
            yield (int(rng.integers(0, 2 ** int(rng.integers(1, 64)))), trial, int(rng.integers(0, 2**20)))


def test_words_are_numpys_coercion_of_the_entropy():
    """A uint32 array is taken as it is: the same state as the ints themselves means the same words."""
    for e in entropies(200):
        mine = np.random.SeedSequence(seeded.words(*e).astype(np.uint32)).generate_state(8)
        np.testing.assert_array_equal(mine, np.random.SeedSequence(list(e)).generate_state(8))
    assert seeded.words(0, 2**32 + 5, 7).tolist() == [0, 5, 1, 7]


def test_compiled_uniforms_are_numpys_random():
    for e in entropies(400):
        n = int(np.random.default_rng(e[-1]).integers(1, 3000))
        got = seeded.uniforms(e, n, compiled=True)
        np.testing.assert_array_equal(got, np.random.default_rng(list(e)).random(n))
        np.testing.assert_array_equal(got, seeded.uniforms(e, n))


def test_compiled_choice_picks_numpys_set():
    """Floyd's algorithm with numpy's 32-bit bounded draws (a buffered half of each output), every
    size from one to all but one, pools small and large (numpy's other branch falls back)."""
    rng = np.random.default_rng(8)
    cases = [(2, 1), (3, 2), (1000, 1), (1000, 37), (1000, 999), (10_000, 9_999), (10_001, 200), (50_000, 1000)]
    cases += [(int(p), int(rng.integers(1, p))) for p in rng.integers(2, 5000, 300)]
    for (pop, size), e in zip(cases, entropies(len(cases), 9)):
        want = np.random.default_rng(list(e)).choice(pop, size=size, replace=False)
        got = seeded.choice(e, pop, size, compiled=True)
        assert sorted(got.tolist()) == sorted(want.tolist()), (pop, size, e)
        assert len(set(got.tolist())) == size and got.min() >= 0 and got.max() < pop


def test_compiled_tie_breaks_are_numpys_integers():
    for e in entropies(300):
        for bits in (33, 40, 62, 63):
            got = seeded.top_bits(e, 17, bits, compiled=True)
            np.testing.assert_array_equal(got, np.random.default_rng(list(e)).integers(0, 2**bits, 17))


def test_negative_entropy_is_refused_as_numpy_refuses_it():
    with pytest.raises(ValueError):
        seeded.uniforms((-1, 2), 3, compiled=True)


def test_warm_up_loads_the_compiled_draws_on_a_thread():
    """An asynchronous run starts this while its hosts start; the loop's first draw then finds them loaded."""
    import sys

    thread = seeded.warm_up()
    thread.join(timeout=300)
    assert not thread.is_alive() and "fedsim.core.seeded_kernels" in sys.modules
    assert thread.name == "fedsim-seeded-warm-up"
