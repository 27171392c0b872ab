"""Soft-DTW (Cuturi & Blondel, "Soft-DTW: a Differentiable Loss Function for Time-Series", ICML 2017) over a cost
matrix D: a dynamic program with a soft minimum, which no expression can write.

``soft_dtw`` is the reference: the recursion in plain torch (autograd differentiates through the loop).
``SoftDTW`` is the kind of kernel people ship: the same forward into a preallocated buffer, and the paper's
backward recursion (Algorithm 2) for E = d R[N, M] / d D by hand.
"""

import torch


def softmin(a, b, c, gamma):
    """-gamma * log(exp(-a/gamma) + exp(-b/gamma) + exp(-c/gamma)), without overflow."""
    r = torch.stack([a, b, c]) / -gamma
    return -gamma * torch.logsumexp(r, dim=0)


def soft_dtw(D, gamma=1.0):
    """The reference: R[i][j] = D[i-1, j-1] + softmin(R[i-1][j-1], R[i-1][j], R[i][j-1])."""
    n, m = D.shape
    inf = torch.tensor(float("inf"), dtype=D.dtype)
    R = [[inf] * (m + 1) for _ in range(n + 1)]
    R[0][0] = torch.zeros((), dtype=D.dtype)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            R[i][j] = D[i - 1, j - 1] + softmin(R[i - 1][j - 1], R[i - 1][j], R[i][j - 1], gamma)
    return R[n][m]


class SoftDTW(torch.autograd.Function):
    """Soft-DTW with the paper's backward recursion, computing in the dtype of D."""

    @staticmethod
    def forward(ctx, D, gamma=1.0):
        n, m = D.shape
        R = torch.full((n + 2, m + 2), float("inf"), dtype=D.dtype)
        R[0, 0] = 0.0
        for i in range(1, n + 1):
            for j in range(1, m + 1):
                R[i, j] = D[i - 1, j - 1] + softmin(R[i - 1, j - 1], R[i - 1, j], R[i, j - 1], gamma)
        ctx.save_for_backward(D, R)
        ctx.gamma = gamma
        return R[n, m].clone()

    @staticmethod
    def backward(ctx, grad_output):
        D, R = ctx.saved_tensors
        gamma = ctx.gamma
        n, m = D.shape
        Dp = torch.zeros((n + 2, m + 2), dtype=D.dtype)
        Dp[1:n + 1, 1:m + 1] = D
        E = torch.zeros((n + 2, m + 2), dtype=D.dtype)
        E[n + 1, m + 1] = 1.0
        R = R.clone()
        R[:, m + 1] = -float("inf")
        R[n + 1, :] = -float("inf")
        R[n + 1, m + 1] = R[n, m]
        for j in range(m, 0, -1):
            for i in range(n, 0, -1):
                a = torch.exp((R[i + 1, j] - R[i, j] - Dp[i + 1, j]) / gamma)
                b = torch.exp((R[i, j + 1] - R[i, j] - Dp[i, j + 1]) / gamma)
                c = torch.exp((R[i + 1, j + 1] - R[i, j] - Dp[i + 1, j + 1]) / gamma)
                E[i, j] = E[i + 1, j] * a + E[i, j + 1] * b + E[i + 1, j + 1] * c
        return grad_output * E[1:n + 1, 1:m + 1], None
