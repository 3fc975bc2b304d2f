"""Observation Jacobians for Kalman updates, stored in structured form (never a kron product).

A linear head ``z_b = W x_b`` (``W`` is C x P, parameters ``vec(W)`` row-major) has Jacobian
``dz_b/dvec(W) = I_C kron x_b^T``. Whitened observations (rows mixed by a C x C matrix per
example, e.g. the square root of the categorical covariance) keep the form
``H_b = coef_b kron x_b^T``: :class:`KronJacobian` stores ``coef`` (B, k, C) and ``x`` (B, P), so
``H @ V`` costs ``O(B P C k')`` instead of ``O(B k C P k')`` for the dense matrix.
:class:`DenseJacobian` holds any (m, n) Jacobian (e.g. of a nonlinear adapter via torch.func).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class Jacobian(ABC):
    """A linear map from parameters (n,) to observations (m,)."""

    n_obs: int
    n_params: int

    @abstractmethod
    def mm(self, v: torch.Tensor) -> torch.Tensor:
        """``H @ v`` for v (n, k) -> (m, k)."""

    @abstractmethod
    def tmm(self, u: torch.Tensor) -> torch.Tensor:
        """``H^T @ u`` for u (m, k) -> (n, k)."""

    @abstractmethod
    def rowdot(self, m: torch.Tensor) -> torch.Tensor:
        """``<H_j, m_j>`` for every row j; m (m, n) -> (m,)."""

    @abstractmethod
    def sq_mv(self, d: torch.Tensor) -> torch.Tensor:
        """``(H * H) @ d`` = diag(H diag(d) H^T) -> (m,)."""

    @abstractmethod
    def block_columns(self, n_blocks: int) -> torch.Tensor:
        """Columns of each of ``n_blocks`` equal contiguous parameter blocks -> (K, m, n/K)."""

    @abstractmethod
    def scale_rows(self, w: torch.Tensor) -> Jacobian:
        """``diag(w) H`` (whitening by a diagonal noise), w (m,)."""

    @abstractmethod
    def mix(self, mix: torch.Tensor) -> Jacobian:
        """Rows of example b replaced by ``mix[b] @ H_b``; mix (B, k', k) -> B k' rows."""

    def dense(self) -> torch.Tensor:
        """The (m, n) matrix (tests and small problems only)."""
        return self.tmm(torch.eye(self.n_obs, dtype=torch.float64)).T

    def quad_diag(self, d: torch.Tensor) -> torch.Tensor:
        """``H diag(d) H^T`` (m, m); structured Jacobians avoid forming ``H``."""
        ht = self.dense().T
        return ht.T @ (d.double()[:, None] * ht)

    def tquad_diag(self, mat: torch.Tensor) -> torch.Tensor:
        """``diag(H^T M H)`` (n,) for M (m, m); structured Jacobians avoid forming ``H``."""
        ht = self.dense().T
        return ((ht @ mat.double()) * ht).sum(1)

    def gram(self) -> torch.Tensor:
        """``H H^T`` (m, m); structured Jacobians avoid forming ``H``."""
        h = self.dense()
        return h @ h.T

    def col_sq(self) -> torch.Tensor:
        """``diag(H^T H)`` (n,): the squared norm of each column."""
        ht = self.dense().T
        return (ht * ht).sum(1)

    def whiten_categorical(self, probs: torch.Tensor) -> Jacobian:
        """``L_b^T H_b`` per example with ``L L^T = diag p - p p^T`` (categorical whitening)."""
        p = probs.double()
        eye = torch.eye(p.shape[-1], dtype=p.dtype, device=p.device)
        return self.mix(p.sqrt().unsqueeze(-1) * (eye - p.unsqueeze(-2)))


class DenseJacobian(Jacobian):
    """An explicit (m, n) Jacobian."""

    def __init__(self, j: torch.Tensor) -> None:
        self.j = j.double()
        self.n_obs, self.n_params = self.j.shape

    def mm(self, v: torch.Tensor) -> torch.Tensor:
        return self.j @ v

    def tmm(self, u: torch.Tensor) -> torch.Tensor:
        return self.j.T @ u

    def rowdot(self, m: torch.Tensor) -> torch.Tensor:
        return (self.j * m).sum(-1)

    def sq_mv(self, d: torch.Tensor) -> torch.Tensor:
        return (self.j * self.j) @ d

    def gram(self) -> torch.Tensor:
        return self.j @ self.j.T

    def col_sq(self) -> torch.Tensor:
        return (self.j * self.j).sum(0)

    def block_columns(self, n_blocks: int) -> torch.Tensor:
        return self.j.reshape(self.n_obs, n_blocks, -1).permute(1, 0, 2)

    def scale_rows(self, w: torch.Tensor) -> DenseJacobian:
        return DenseJacobian(self.j * w.double()[:, None])

    def mix(self, mix: torch.Tensor) -> DenseJacobian:
        rows = self.j.reshape(mix.shape[0], mix.shape[2], self.n_params)
        return DenseJacobian((mix.double() @ rows).reshape(-1, self.n_params))


class KronJacobian(Jacobian):
    """Row ``(b, i)`` is ``sum_c coef[b, i, c] (e_c kron x_b)^T``; parameters laid out (C, P).

    ``identity=True`` marks the logit Jacobian itself (``coef_b = I_C``): products then skip
    the (B, C, C) coefficient tensor entirely (it is never materialised).
    """

    def __init__(self, coef: torch.Tensor, x: torch.Tensor, identity: bool = False) -> None:
        self._coef, self.x = coef.double(), x.double()
        self.identity = identity
        b, self.k, self.n_classes = self._coef.shape
        self.n_in = self.x.shape[1]
        self.n_obs, self.n_params = b * self.k, self.n_classes * self.n_in

    @property
    def coef(self) -> torch.Tensor:
        return self._coef

    @classmethod
    def logits(cls, x: torch.Tensor, n_classes: int) -> KronJacobian:
        """Jacobian of the logits ``W x_b`` (coef = identity, never materialised)."""
        eye = torch.eye(n_classes, dtype=torch.float64, device=x.device)
        return cls(eye.expand(x.shape[0], n_classes, n_classes), x, identity=True)

    def class_information(self) -> torch.Tensor:
        """``sum_b coef_b^T coef_b`` (C, C), the class factor of ``sum_b F_b kron x_b x_b^T``."""
        if self.identity:
            eye = torch.eye(self.n_classes, dtype=self.x.dtype, device=self.x.device)
            return self.x.shape[0] * eye
        return torch.einsum("bic,bid->cd", self.coef, self.coef)

    def whiten_categorical(self, probs: torch.Tensor) -> Jacobian:
        if self.identity:
            return CategoricalKronJacobian(probs, self.x)
        return super().whiten_categorical(probs)

    def mm(self, v: torch.Tensor) -> torch.Tensor:
        t = torch.matmul(self.x, v.reshape(self.n_classes, self.n_in, -1))  # (C, B, k) no copy
        if self.identity:
            return t.transpose(0, 1).reshape(self.n_obs, -1)
        return torch.einsum("bic,cbk->bik", self.coef, t).reshape(self.n_obs, -1)

    def tmm(self, u: torch.Tensor) -> torch.Tensor:
        u = u.reshape(-1, self.k, u.shape[-1])
        t = u if self.identity else torch.einsum("bic,bik->bck", self.coef, u)
        return torch.einsum("bp,bck->cpk", self.x, t).reshape(self.n_params, -1)

    def rowdot(self, m: torch.Tensor) -> torch.Tensor:
        mv = m.reshape(-1, self.k, self.n_classes, self.n_in)
        if self.identity:
            return torch.einsum("bccp,bp->bc", mv, self.x).reshape(-1)
        t = torch.einsum("bicp,bp->bic", mv, self.x)
        return (t * self.coef).sum(-1).reshape(-1)

    def sq_mv(self, d: torch.Tensor) -> torch.Tensor:
        t = (self.x**2) @ d.reshape(self.n_classes, self.n_in).T  # (B, C)
        if self.identity:
            return t.reshape(-1)
        return torch.einsum("bic,bc->bi", self.coef**2, t).reshape(-1)

    def block_columns(self, n_blocks: int) -> torch.Tensor:
        if n_blocks != self.n_classes:
            raise ValueError("a KronJacobian's natural blocks are its classes")
        cols = torch.einsum("bic,bp->cbip", self.coef, self.x)
        return cols.reshape(self.n_classes, self.n_obs, self.n_in)

    def scale_rows(self, w: torch.Tensor) -> KronJacobian:
        return KronJacobian(self.coef * w.double().reshape(-1, self.k, 1), self.x)

    def coef_mm(self, u: torch.Tensor) -> torch.Tensor:
        """``coef_b @ u`` for u (C, r) -> (B, k, r)."""
        return self.coef @ u.to(self.coef)

    def mix(self, mix: torch.Tensor) -> KronJacobian:
        if self.identity:
            return KronJacobian(mix.double(), self.x)
        return KronJacobian(mix.double() @ self.coef, self.x)

    def _pair_diag(self, d: torch.Tensor) -> torch.Tensor:
        """``t[b, e, c] = sum_p x[b,p] x[e,p] d[c,p]`` (B, B, C): O(B^2 C P)."""
        return torch.einsum("bp,ep,cp->bec", self.x, self.x,
                            d.double().reshape(self.n_classes, self.n_in))

    def quad_diag(self, d: torch.Tensor) -> torch.Tensor:
        # rows (b,i), (e,j): sum_c coef[b,i,c] coef[e,j,c] t[b,e,c]
        t = self._pair_diag(d)
        if self.identity:  # coef = I: block (b, e) is diag(t[b, e])
            return torch.diag_embed(t).permute(0, 2, 1, 3).reshape(self.n_obs, self.n_obs)
        out = torch.einsum("bic,bec,ejc->biej", self.coef, t, self.coef)
        return out.reshape(self.n_obs, self.n_obs)

    def gram(self) -> torch.Tensor:
        return self.quad_diag(torch.ones(self.n_params, dtype=self.x.dtype, device=self.x.device))

    def col_sq(self) -> torch.Tensor:
        # column (c, p): sum_b (sum_i coef[b,i,c]^2) x[b,p]^2; O(B C (k + P))
        if self.identity:
            w = torch.ones(self.x.shape[0], self.n_classes, dtype=self.x.dtype,
                           device=self.x.device)
        else:
            w = (self.coef**2).sum(1)
        return (w.T @ self.x**2).reshape(-1)

    def tquad_diag(self, mat: torch.Tensor) -> torch.Tensor:
        # entry (c,p): sum_{b,e} x[b,p] x[e,p] Q[b,e,c], Q = coef^T M coef per example pair
        b = self.x.shape[0]
        m4 = mat.double().reshape(b, self.k, b, self.k)
        q = torch.einsum("bic,biej,ejc->bec", self.coef, m4, self.coef)
        return torch.einsum("bp,ep,bec->cp", self.x, self.x, q).reshape(-1)


class CategoricalKronJacobian(KronJacobian):
    """Logit Jacobian whitened by the categorical covariance: ``coef_b = L_b^T``, built lazily.

    ``L_b^T = diag(sqrt p_b)(I - 1 p_b^T)`` (so ``L_b L_b^T = F_b = diag p_b - p_b p_b^T``). The
    class information ``sum_b F_b = diag(sum_b p_b) - P^T P`` costs O(B C^2) without the
    (B, C, C) coefficients, which the Kronecker and block structures never need.
    """

    def __init__(self, probs: torch.Tensor, x: torch.Tensor) -> None:
        self.probs, self.x = probs.double(), x.double()
        self.identity = False
        self._dense_coef: torch.Tensor | None = None
        b, self.n_classes = self.probs.shape
        self.k = self.n_classes
        self.n_in = self.x.shape[1]
        self.n_obs, self.n_params = b * self.k, self.n_classes * self.n_in

    @property
    def coef(self) -> torch.Tensor:  # type: ignore[override]
        if self._dense_coef is None:
            p = self.probs
            eye = torch.eye(self.n_classes, dtype=p.dtype, device=p.device)
            self._dense_coef = p.sqrt().unsqueeze(-1) * (eye - p.unsqueeze(-2))
        return self._dense_coef

    def class_information(self) -> torch.Tensor:
        return torch.diag(self.probs.sum(0)) - self.probs.T @ self.probs

    def quad_diag(self, d: torch.Tensor) -> torch.Tensor:
        """``H diag(d) H^T`` in O(B^2 C (C + P)), not O(B^2 C^3): block (b, e) is
        ``L_b^T T L_e = diag(sqrt p_b) (I - 1 p_b^T) T (I - p_e 1^T) diag(sqrt p_e)``
        with ``T = diag(t[b, e])``, expanded as ``T - (T p_e) 1^T - 1 (p_b T)^T + (p_b^T T p_e)``.
        """
        p, t = self.probs, self._pair_diag(d)  # (B, C), (B, B, C)
        s = torch.einsum("bc,bec,ec->be", p, t, p)
        inner = (torch.diag_embed(t) - (t * p.unsqueeze(0)).unsqueeze(-1)
                 - (p.unsqueeze(1) * t).unsqueeze(-2) + s[..., None, None])  # (B, B, C, C)
        root = p.sqrt()
        out = root[:, None, :, None] * inner * root[None, :, None, :]
        return out.permute(0, 2, 1, 3).reshape(self.n_obs, self.n_obs)

    def top_rows(self, k: int) -> KronJacobian:
        """Rows ``(b, i)`` of each example's ``k`` likeliest classes i (row i of ``L_b^T`` is
        ``sqrt(p_bi) (e_i - p_b)^T``) as a (B k)-row :class:`KronJacobian`."""
        idx = self.probs.topk(min(k, self.n_classes), dim=1).indices  # (B, k)
        onehot = torch.nn.functional.one_hot(idx, self.n_classes).to(self.probs)
        root = self.probs.gather(1, idx).sqrt().unsqueeze(-1)
        return KronJacobian(root * (onehot - self.probs.unsqueeze(1)), self.x)

    def col_sq(self) -> torch.Tensor:
        """``sum_i (L_b^T)_{ic}^2 = (F_b)_{cc} = p_bc - p_bc^2``."""
        return ((self.probs - self.probs**2).T @ self.x**2).reshape(-1)

    def coef_mm(self, u: torch.Tensor) -> torch.Tensor:
        """``L_b^T u = sqrt(p_b) * (u - 1 (p_b^T u))`` in O(B C r), not O(B C^2 r)."""
        u = u.to(self.probs)
        return self.probs.sqrt().unsqueeze(-1) * (u.unsqueeze(0) - (self.probs @ u).unsqueeze(1))
