"""Fake (meta) kernels and autograd formulas for the native ops, so autograd, opcheck and
torch.compile see them. Imported by crysbench.ops after the extension is loaded."""

from __future__ import annotations

import torch

_done = False


def register() -> None:
    global _done
    if _done:
        return
    _done = True
    _register_fakes()
    _register_autograd()


def _register_fakes() -> None:
    @torch.library.register_fake("crysbench::neighbor_list")
    def _(positions, cells, pbc, ptr, cutoff, return_vectors):
        e = torch.library.get_ctx().new_dynamic_size()
        idx = positions.new_empty((e,), dtype=torch.long)
        vec = positions.new_empty((e if return_vectors else 0, 3))
        return idx, idx.clone(), positions.new_empty((e, 3), dtype=torch.long), positions.new_empty((e,)), vec

    @torch.library.register_fake("crysbench::knn_cap")
    def _(edge_i, distances, num_atoms, k, tol):
        e = torch.library.get_ctx().new_dynamic_size()
        return edge_i.new_empty((e,)), edge_i.new_empty((num_atoms,))

    @torch.library.register_fake("crysbench::triplets")
    def _(edge_i, vectors, num_atoms):
        t = torch.library.get_ctx().new_dynamic_size()
        return edge_i.new_empty((t,)), edge_i.new_empty((t,)), vectors.new_empty((t,))

    def _reduce_fake(src, n, reduce):
        out = src.new_empty((n, *src.shape[1:]))
        arg = src.new_empty(out.shape if reduce == "max" else (0,), dtype=torch.long)
        return out, arg

    @torch.library.register_fake("crysbench::segment_csr")
    def _(src, ptr, reduce):
        return _reduce_fake(src, ptr.shape[0] - 1, reduce)

    @torch.library.register_fake("crysbench::scatter")
    def _(src, index, dim_size, reduce):
        return _reduce_fake(src, dim_size, reduce)

    @torch.library.register_fake("crysbench::gather_mul_scatter")
    def _(x, w, src_index, dst_index, dim_size):
        return x.new_empty((dim_size, *x.shape[1:]))


def _reduce_backward(grad_out, index, arg, count, reduce, n_src):
    """Gradient of a sum/mean/max reduction with respect to its source rows."""
    if reduce == "max":
        grad = grad_out.new_zeros((n_src + 1, *grad_out.shape[1:]))  # row n_src absorbs empty segments
        return grad.scatter_(0, arg, grad_out)[:n_src]
    if reduce == "mean":
        grad_out = grad_out / count.clamp_min(1).to(grad_out.dtype).view(-1, *([1] * (grad_out.dim() - 1)))
    return grad_out.index_select(0, index)


def _register_autograd() -> None:
    def scatter_setup(ctx, inputs, output):
        src, index, dim_size, reduce = inputs
        ctx.reduce, ctx.n_src, ctx.dim_size = reduce, src.shape[0], dim_size
        cnt = torch.bincount(index, minlength=dim_size) if reduce == "mean" else None
        ctx.save_for_backward(index, output[1], cnt)

    def scatter_backward(ctx, grad_out, _grad_arg):
        index, arg, cnt = ctx.saved_tensors
        return _reduce_backward(grad_out, index, arg, cnt, ctx.reduce, ctx.n_src), None, None, None

    torch.library.register_autograd("crysbench::scatter", scatter_backward, setup_context=scatter_setup)

    def csr_setup(ctx, inputs, output):
        src, ptr, reduce = inputs
        ctx.reduce, ctx.n_src = reduce, src.shape[0]
        index = torch.repeat_interleave(torch.arange(ptr.numel() - 1, device=ptr.device), ptr.diff(),
                                        output_size=src.shape[0])
        ctx.save_for_backward(index, output[1], ptr.diff())

    def csr_backward(ctx, grad_out, _grad_arg):
        index, arg, cnt = ctx.saved_tensors
        return _reduce_backward(grad_out, index, arg, cnt, ctx.reduce, ctx.n_src), None, None

    torch.library.register_autograd("crysbench::segment_csr", csr_backward, setup_context=csr_setup)

    def gms_setup(ctx, inputs, output):
        x, w, src_index, dst_index, dim_size = inputs
        ctx.n_x = x.shape[0]
        ctx.save_for_backward(x, w, src_index, dst_index)

    def gms_backward(ctx, grad_out):
        x, w, src_index, dst_index = ctx.saved_tensors
        # grad_x[src[e]] += grad_out[dst[e]] * w[e]: the same op with the roles of the indices swapped
        grad_x = torch.ops.crysbench.gather_mul_scatter(grad_out, w, dst_index, src_index, ctx.n_x) \
            if ctx.needs_input_grad[0] else None
        grad_w = grad_out.index_select(0, dst_index) * x.index_select(0, src_index) \
            if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None, None, None

    torch.library.register_autograd("crysbench::gather_mul_scatter", gms_backward, setup_context=gms_setup)
