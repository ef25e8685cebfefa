import pytest
import torch

from training.saliency_guided import consistency_loss, head_cells, lowest_cells, masked_copy
from training.train import TrainConfig


def test_the_masked_cells_are_each_images_least_relevant_and_at_most_the_share():
    generator = torch.Generator().manual_seed(0)
    relevance = torch.rand(200, 36, generator=torch.Generator().manual_seed(1))
    masked = lowest_cells(relevance, 0.5, generator)
    counts = masked.sum(dim=1)
    assert counts.max() <= 18 and counts.min() == 0  # drawn in [0, half the cells]
    assert counts.float().std() > 3  # drawn per image, not one share for the batch
    for row, picked in zip(relevance, masked, strict=True):
        if picked.any() and (~picked).any():
            assert row[picked].max() < row[~picked].min()


def test_only_candidate_cells_are_masked_and_the_share_is_of_the_candidates():
    relevance = torch.rand(300, 16, generator=torch.Generator().manual_seed(2))
    candidates = torch.zeros(300, 16, dtype=torch.bool)
    candidates[:, 4:12] = True
    masked = lowest_cells(relevance, 1.0, torch.Generator().manual_seed(0), candidates)
    assert not masked[:, :4].any() and not masked[:, 12:].any()
    assert masked.sum(dim=1).max() == 7  # floor(u * 8), u < 1: never all 8 candidates


def test_head_cells_are_the_bright_ones_whatever_the_units():
    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    disk = ((yy - 23.5) ** 2 + (xx - 23.5) ** 2 < 18**2).float()  # a head on a black background
    for images in (disk.view(1, 1, 48, 48), (disk.view(1, 1, 48, 48) - 0.2) / 0.3 + 0.05):
        cells = head_cells(images, 8).view(6, 6)
        assert not cells[0, 0] and not cells[5, 5] and not cells[0, 5]  # corners: background
        assert cells[1:5, 1:5].all()  # the middle: head
    assert not head_cells(torch.ones(1, 1, 16, 16), 8).any()  # a flat image has no head to rank


def test_the_copy_blacks_out_whole_cells_where_relevance_is_low():
    images = torch.ones(1, 1, 32, 32)
    images[0, 0, 0, 0] = 0.0  # every cell is in the head
    relevance = torch.arange(16.0).view(1, 16)  # cell 0 (top left) least relevant, cell 15 most
    generator = torch.Generator().manual_seed(0)
    while True:  # draw until at least one cell is masked
        copy = masked_copy(images, relevance, 8, -2.0, 0.5, generator)
        if (copy == -2.0).any():
            break
    filled = (copy[0, 0] == -2.0).float()
    cells = filled.view(4, 8, 4, 8).mean(dim=(1, 3))  # per 8 px cell: all or nothing
    assert set(cells.unique().tolist()) <= {0.0, 1.0}
    order = cells.flatten()
    assert order[0] == 1.0 and order[15] == 0.0
    assert torch.all(order[:-1] >= order[1:])  # masked cells are a prefix of the relevance order
    assert torch.equal(copy[copy != -2.0], images[copy != -2.0])
    assert (copy == -2.0).float().mean() <= 0.5  # never more than max_fraction of the cells


def test_a_non_square_grid_is_refused():
    with pytest.raises(ValueError, match="square"):
        masked_copy(torch.zeros(1, 1, 8, 8), torch.ones(1, 5), 4, 0.0, 0.5, torch.Generator())


def test_the_loss_is_zero_for_the_same_answer_and_moves_only_the_masked_answer():
    logits = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
    same = logits.detach().clone().requires_grad_(True)
    assert consistency_loss(same, logits).item() == pytest.approx(0.0, abs=1e-7)
    other = torch.tensor([[0.0, 2.0, -1.0]], requires_grad=True)
    loss = consistency_loss(other, logits)
    assert loss.item() > 0.5
    loss.backward()
    assert logits.grad is None and other.grad is not None and other.grad.abs().sum() > 0


def test_its_settings_are_checked():
    with pytest.raises(ValueError, match="saliency_guided"):
        TrainConfig(epochs=1, saliency_guided_weight=-1.0)
    with pytest.raises(ValueError, match="saliency_guided"):
        TrainConfig(epochs=1, saliency_guided_max_fraction=0.0)
