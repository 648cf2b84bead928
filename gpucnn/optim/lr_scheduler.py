"""Learning-rate schedules, stepped once per epoch (torch.optim.lr_scheduler
names and arguments). Each computes the rate in closed form from the epoch
count `last_epoch` and each group's starting rate `initial_lr`, and writes it
into optimizer.param_groups[i]['lr']:

StepLR(optimizer, step_size, gamma=0.1)
    lr = initial_lr * gamma ** (epoch // step_size)
CosineAnnealingLR(optimizer, T_max, eta_min=0.0)
    lr = eta_min + (initial_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2
    (torch computes the same curve recursively; past T_max it rises again)
LinearLR(optimizer, start_factor=1/3, end_factor=1.0, total_iters=5)
    lr = initial_lr * (start + (end - start) * min(epoch, total_iters) / total_iters)
    -- torch's linear warmup
LinearWarmup(optimizer, warmup_epochs, start_factor=0.1, after=None)
    the first warmup_epochs epochs follow LinearLR(start_factor, 1.0,
    warmup_epochs); then `after` (a schedule built on the same optimizer
    beforehand, e.g. CosineAnnealingLR) runs with its epoch count starting at
    0, or the rate stays at initial_lr. Like torch's SequentialLR([LinearLR,
    after], milestones=[warmup_epochs]).
"""
import math


class LRScheduler:
    def __init__(self, optimizer, last_epoch=-1):
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            if last_epoch == -1:
                group.setdefault("initial_lr", group["lr"])
            elif "initial_lr" not in group:
                raise KeyError(f"{type(self).__name__}: resuming at last_epoch={last_epoch} needs "
                               f"'initial_lr' in every parameter group")
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self.step()

    def lr_at(self, base_lr, epoch):
        raise NotImplementedError

    def step(self):
        self.last_epoch += 1
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.lr_at(base, self.last_epoch)

    def get_last_lr(self):
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self):
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state):
        self.last_epoch = int(state["last_epoch"])
        self.base_lrs = [float(b) for b in state["base_lrs"]]
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.lr_at(base, self.last_epoch)


class StepLR(LRScheduler):
    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        if step_size < 1:
            raise ValueError(f"StepLR: step_size must be >= 1, got {step_size}")
        self.step_size, self.gamma = int(step_size), float(gamma)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr, epoch):
        return base_lr * self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        if T_max < 1:
            raise ValueError(f"CosineAnnealingLR: T_max must be >= 1, got {T_max}")
        self.T_max, self.eta_min = int(T_max), float(eta_min)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr, epoch):
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2


class LinearLR(LRScheduler):
    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5, last_epoch=-1):
        if not (0 < start_factor <= 1 and 0 <= end_factor <= 1) or total_iters < 1:
            raise ValueError(f"LinearLR: need 0 < start_factor <= 1, 0 <= end_factor <= 1, total_iters >= 1; "
                             f"got {start_factor}, {end_factor}, {total_iters}")
        self.start_factor, self.end_factor = float(start_factor), float(end_factor)
        self.total_iters = int(total_iters)
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr, epoch):
        progress = min(epoch, self.total_iters) / self.total_iters
        return base_lr * (self.start_factor + (self.end_factor - self.start_factor) * progress)


class LinearWarmup(LRScheduler):
    def __init__(self, optimizer, warmup_epochs, start_factor=0.1, after=None, last_epoch=-1):
        if warmup_epochs < 1:
            raise ValueError(f"LinearWarmup: warmup_epochs must be >= 1, got {warmup_epochs}")
        if after is not None and after.optimizer is not optimizer:
            raise ValueError("LinearWarmup: `after` must schedule the same optimizer")
        self.warmup_epochs, self.start_factor, self.after = int(warmup_epochs), float(start_factor), after
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr, epoch):
        if epoch < self.warmup_epochs:
            return base_lr * (self.start_factor + (1 - self.start_factor) * epoch / self.warmup_epochs)
        return base_lr if self.after is None else self.after.lr_at(base_lr, epoch - self.warmup_epochs)
