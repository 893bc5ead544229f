"""Evaluate a fused ResNet over a dataset sharded across processes with torch.distributed.

    torchrun --nproc-per-node 2 examples/distributed_eval.py --out predictions.pt
    python examples/distributed_eval.py --out predictions.pt       # one process, same result

Each process builds the same model, takes every world_size-th sample through
``DistributedSampler`` and evaluates them; rank 0 gathers ``(index, logits)`` from every
process, puts each row back at its sample's index and saves the logits of the whole dataset
in dataset order: what a single process would have computed.  The backend is NCCL when
each process has a GPU (``LOCAL_RANK`` picks it), gloo on CPU.

The dataset and model here are placeholders (random images, untrained weights, or
``--weights`` for a state_dict); replace ``build_dataset``/``build_model`` with your own.
"""
import argparse
import os

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import fusedres


class Indexed(Dataset):
    """Yields ``(index, *sample)``: the index travels with each prediction, because the
    sampler hands out samples strided across ranks and pads the last round with repeats."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return (index, *self.dataset[index])


def build_dataset(samples: int, size: int) -> Dataset:
    images = torch.randn(samples, 3, size, size, generator=torch.Generator().manual_seed(0))
    return TensorDataset(images)


def build_model(name: str, num_classes: int, weights: str = None) -> torch.nn.Module:
    """A fused model (``fusedres.fuse(your_torchvision_model)`` works the same way)."""
    torch.manual_seed(0)  # without --weights: the same untrained weights in every process
    return getattr(fusedres, name)(weights=weights, num_classes=num_classes).eval()


@torch.inference_mode()
def evaluate(model, dataset, batch_size, device, rank, world_size):
    """This process's ``(indices, logits)``; every process returns the same count."""
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler)
    indices, logits = [], []
    for index, images in loader:
        indices.append(index.to(device))
        logits.append(model(images.to(device)).float())
    return torch.cat(indices), torch.cat(logits)


def gather(indices, logits, world_size):
    """Every rank's ``(indices, logits)``, concatenated (same on every rank)."""
    all_indices = [torch.empty_like(indices) for _ in range(world_size)]
    all_logits = [torch.empty_like(logits) for _ in range(world_size)]
    dist.all_gather(all_indices, indices)
    dist.all_gather(all_logits, logits)
    return torch.cat(all_indices), torch.cat(all_logits)


def in_dataset_order(indices, logits, total):
    """Row ``i`` of the result is sample ``i``'s logits (a padded repeat writes its row
    twice, with the same values)."""
    result = logits.new_empty((total, logits.shape[1]))
    result[indices] = logits
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--weights", help="a state_dict file for the model")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--size", type=int, default=64, help="image height and width")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", required=True, help="where rank 0 saves the logits")
    args = parser.parse_args(argv)

    distributed = "WORLD_SIZE" in os.environ  # set by torchrun
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if distributed else 0
    world_size = dist.get_world_size() if distributed else 1

    model = build_model(args.model, args.num_classes, args.weights).to(device)
    dataset = Indexed(build_dataset(args.samples, args.size))
    indices, logits = evaluate(model, dataset, args.batch_size, device, rank, world_size)
    if distributed:
        indices, logits = gather(indices, logits, world_size)
        dist.destroy_process_group()
    logits = in_dataset_order(indices, logits, len(dataset))
    if rank == 0:
        torch.save(logits.cpu(), args.out)
        print(f"saved logits of {len(dataset)} samples from {world_size} process(es) to "
              f"{args.out}")


if __name__ == "__main__":
    main()
