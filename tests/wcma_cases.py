"""The case grid both WCMA kernels are held to (frequency stage, fused attention): the dtypes they claim, the
336 px (24x24) and 518 px (37x37, odd: zero-padded DWT) patch grids, batch 1 and an odd batch, at C = 64 (the
interpreter stays fast) and once at the full width C = 768 with the default hidden width 192."""
import pytest
import torch

DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
GRIDS = (24, 37)
BATCHES = (1, 5)


def grid_cases(check):
    """The two tests of the grid for a kernel's ``check(B, H, W, C, hidden, dtype)``: (grids x batches x dtypes at
    C = 64, hidden 20; full width at 24x24), to assign in the test module."""
    @DTYPES
    @pytest.mark.parametrize("grid", GRIDS)
    @pytest.mark.parametrize("batch", BATCHES)
    def test_grids_batches_dtypes(grid, batch, dtype):
        check(batch, grid, grid, 64, 20, dtype)

    @DTYPES
    def test_full_width_c768_default_hidden(dtype):
        check(1, 24, 24, 768, 192, dtype)

    return test_grids_batches_dtypes, test_full_width_c768_default_hidden
