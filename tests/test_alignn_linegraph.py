"""ALIGNN on batches without a line graph (a store ingested without triplets) builds it itself."""

import torch

from crysbench import models
from crysbench.graph import build_graph, with_line_graph
from crysbench.synthetic import random_batch


def _graphs(line_graph: bool):
    pos, cells, pbc, ptr = random_batch(4, atoms=(3, 8), seed=1)[:4]
    parts = [slice(int(a), int(b)) for a, b in zip(ptr[:-1], ptr[1:], strict=True)]
    numbers = [torch.randint(1, 40, (s.stop - s.start,), generator=torch.Generator().manual_seed(k))
               for k, s in enumerate(parts)]
    return build_graph(numbers, [pos[s] for s in parts], list(cells), list(pbc), cutoff=5.0,
                       max_neighbors=8, line_graph=line_graph)


def test_with_line_graph_matches_build_graph():
    full, bare = _graphs(True), _graphs(False)
    built = with_line_graph(bare)
    assert torch.equal(built.edge_a, full.edge_a) and torch.equal(built.edge_b, full.edge_b)
    assert with_line_graph(full) is full


def test_alignn_without_line_graph_equals_with():
    torch.manual_seed(0)
    model = models.build("alignn", models.get("alignn").size_ladder()["xxs"]).double().eval()
    with torch.no_grad():
        a, b = model(_graphs(True)), model(_graphs(False))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
