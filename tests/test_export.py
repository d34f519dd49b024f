"""torch.export at any length: one program for a dynamic L of any value from 1 up.

A module calls sliding_window_attention with every window form (symmetric, asymmetric, causal,
one side unbounded, dilated, dilated per head, a softcap-free padding mask); it is exported
once, at one length, with L declared free (``Dim("L", min=1)``), and the program is run at
lengths it was not traced with: below the window, around it, and far above it, none a multiple
of anything in particular. Each result must equal eager mode's. The length must stay dynamic in
the program: no silent specialization.
"""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim, export
from torch.utils._sympy.numbers import int_oo

from swa_tutorial import sliding_window_attention
from swa_tutorial.backends.diagonals import exports_every_length

# (window, dilation): every form the entry point takes
FORMS = [(4, 1), ((3, 1), 1), ((5, 0), 1), ((0, 2), 1), ((None, 0), 1), ((2, None), 1), ((2, 1), 2), ((3, 3), (1, 3))]
TRACED_AT = 37
LENGTHS = [1, 2, 3, 6, 50, 257]  # below the window, about it, far above it


class EveryForm(torch.nn.Module):
    """The attention of q, k, v [B, L, 2, 4] and a padding mask [B, L], once per window form."""

    def forward(self, q, k, v, mask):
        return tuple(sliding_window_attention(q, k, v, window, key_padding_mask=mask, dilation=dilation)
                     for window, dilation in FORMS)


def _problem(L):
    gen = torch.Generator().manual_seed(L)
    q, k, v = (torch.randn(2, L, 2, 4, generator=gen) for _ in range(3))
    mask = torch.rand(2, L, generator=gen) < 0.2
    mask[1, : L // 2] = True  # a run of padding: some windows see no key at all
    return q, k, v, mask


@pytest.fixture(scope="module")
def program():
    return export(EveryForm(), _problem(TRACED_AT), dynamic_shapes=({1: Dim("L", min=1)},) * 4)


def test_the_length_stays_dynamic(program):
    """No silent specialization: the program's inputs have a symbolic L ranging from 1 up."""
    user_inputs = set(program.graph_signature.user_inputs)
    inputs = [node for node in program.graph.nodes if node.op == "placeholder" and node.name in user_inputs]
    lengths = {str(node.meta["val"].shape[1]) for node in inputs}
    assert len(inputs) == 4 and len(lengths) == 1 and not lengths.pop().isdigit()
    (bounds,) = program.range_constraints.values()
    assert bounds.lower == 1 and bounds.upper == int_oo


@pytest.mark.parametrize("L", LENGTHS)
def test_the_program_equals_eager_at_lengths_it_was_not_traced_with(program, L):
    inputs = _problem(L)
    module = program.module()
    for (window, dilation), got, expected in zip(FORMS, module(*inputs), EveryForm()(*inputs)):
        assert got.shape == expected.shape == (2, L, 2, 4)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=f"window {window}, dilation {dilation}")


def test_the_rule_holds_only_for_a_length_traced_free():
    """Eager and a static export keep their backends; a dynamic L takes the diagonals."""
    seen = []

    class Records(torch.nn.Module):
        def forward(self, q):
            seen.append(exports_every_length(q.shape[1]))
            return q * 2

    q = torch.zeros(1, 5, 1, 1)
    Records()(q)
    export(Records(), (q,))
    export(Records(), (q,), dynamic_shapes=({1: Dim("L", min=1)},))
    assert seen == [False, False, True]
