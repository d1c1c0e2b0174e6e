"""Fixtures shared by several test modules."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread: the tensors are tiny, and on a shared 2-core machine two threads mostly wait."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def fp32_attack_iterates():
    """robustlib.setup sets the evaluation attacks' precision and process count for its process (a profile's
    attack_precision, the run's nproc): every test starts, and leaves the next one, at the library's defaults."""
    from robustlib import evaluate
    evaluate.set_attack_precision("fp32")
    evaluate.set_evaluation_processes(1)
    yield
    evaluate.set_attack_precision("fp32")
    evaluate.set_evaluation_processes(1)
