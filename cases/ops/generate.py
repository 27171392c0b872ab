"""Writes the op corpus (cases/ops/*.toml) from the tables below: python cases/ops/generate.py

The corpus covers every op of the language over its usual domain, special values, 1-D/2-D/3-D shapes,
broadcasting pairs, every matmul form, reductions with dims, losses and small networks. The TOML files are
committed; rerun this after changing the tables.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent

UNARY = {  # op -> domain
    "exp": (-3, 3), "log": (0.1, 3), "log1p": (-0.9, 3), "expm1": (-3, 3), "sqrt": (0.1, 3), "rsqrt": (0.1, 3),
    "abs": (-1, 1), "sin": (-3, 3), "cos": (-3, 3), "tan": (-1.2, 1.2), "asin": (-0.9, 0.9),
    "acos": (-0.9, 0.9), "atan": (-3, 3), "sinh": (-3, 3), "cosh": (-3, 3), "tanh": (-3, 3),
    "asinh": (-3, 3), "acosh": (1.1, 4), "atanh": (-0.9, 0.9), "erf": (-2, 2), "erfc": (-2, 2),
    "erfinv": (-0.9, 0.9), "sigmoid": (-4, 4), "relu": (-1, 1), "elu": (-2, 2), "leaky_relu": (-1, 1),
    "softplus": (-4, 4), "silu": (-4, 4), "gelu": (-3, 3),
}
SHAPES = [[], [5], [3, 4], [2, 3, 4]]

SPECIAL = [  # name, expr, vars {name: (shape, value)}
    ("tanh_saturated_pos", "tanh(x)", {"x": ([], 1000.0)}),
    ("tanh_saturated_neg", "tanh(x)", {"x": ([], -1000.0)}),
    ("tanh_large_vector", "sum(tanh(x))", {"x": ([4], [10.0, 20.0, -30.0, 1000.0])}),
    ("erf_ten", "erf(x)", {"x": ([], 10.0)}),
    ("erfc_ten", "erfc(x)", {"x": ([], 10.0)}),
    ("erf_minus_six", "erf(x)", {"x": ([], -6.0)}),
    ("sin_pi", "sin(x * pi)", {"x": ([], 1.0)}),
    ("cos_half_pi", "cos(x * pi / 2)", {"x": ([], 1.0)}),
    ("sigmoid_far_negative", "sigmoid(x)", {"x": ([3], [-800.0, -100.0, -30.0])}),
    ("sigmoid_far_positive", "sigmoid(x)", {"x": ([3], [800.0, 100.0, 30.0])}),
    ("softplus_past_threshold", "softplus(x)", {"x": ([3], [25.0, 50.0, 1000.0])}),
    ("softplus_far_negative", "softplus(x)", {"x": ([3], [-25.0, -100.0, -1000.0])}),
    ("softplus_beta_threshold", "softplus(x, beta=2.0, threshold=5.0)", {"x": ([4], [-1.0, 1.0, 2.4, 3.0])}),
    ("relu_at_zero", "relu(x)", {"x": ([3], [0.0, 1.0, -1.0])}),
    ("abs_at_zero", "abs(x)", {"x": ([3], [0.0, 2.0, -2.0])}),
    ("leaky_relu_at_zero", "leaky_relu(x, negative_slope=0.2)", {"x": ([2], [0.0, -3.0])}),
    ("elu_at_zero", "elu(x, alpha=0.5)", {"x": ([2], [0.0, -1.0])}),
    ("maximum_tie", "maximum(x, y)", {"x": ([3], [1.0, 2.0, 3.0]), "y": ([3], [1.0, 0.0, 5.0])}),
    ("minimum_tie", "minimum(x, y)", {"x": ([3], [1.0, 2.0, 3.0]), "y": ([3], [1.0, 0.0, 5.0])}),
    ("relu_after_cancellation", "sum(relu(x - y))", {"x": ([2], [0.1, 0.3]), "y": ([2], [0.1, 0.3])}),
    ("exp_large", "exp(x)", {"x": ([], 80.0)}),
    ("exp_overflows_float32", "exp(x)", {"x": ([], 100.0)}),
    ("exp_very_negative", "exp(x)", {"x": ([], -700.0)}),
    ("log_tiny", "log(x)", {"x": ([], 1e-30)}),
    ("log1p_tiny", "log1p(x)", {"x": ([], 1e-12)}),
    ("log1p_near_minus_one", "log1p(x)", {"x": ([], -0.999)}),
    ("expm1_tiny", "expm1(x)", {"x": ([], 1e-10)}),
    ("sqrt_small", "sqrt(x)", {"x": ([], 1e-6)}),
    ("atan_huge", "atan(x)", {"x": ([], 1e10)}),
    ("asin_near_one", "asin(x)", {"x": ([], 0.999)}),
    ("atanh_near_one", "atanh(x)", {"x": ([], 0.999)}),
    ("acosh_near_one", "acosh(x)", {"x": ([], 1.001)}),
    ("erfinv_near_one", "erfinv(x)", {"x": ([], 0.999)}),
    ("gelu_far_negative", "gelu(x)", {"x": ([2], [-10.0, -30.0])}),
    ("silu_far_negative", "silu(x)", {"x": ([2], [-50.0, -700.0])}),
    ("elu_far_negative", "elu(x)", {"x": ([2], [-50.0, -700.0])}),
    ("logsumexp_large_equal", "logsumexp(x)", {"x": ([2], [1000.0, 1000.0])}),
    ("softmax_wide_range", "softmax(x, dim=0)", {"x": ([3], [1000.0, 0.0, -1000.0])}),
    ("log_softmax_wide_range", "log_softmax(x, dim=0)", {"x": ([3], [50.0, 0.0, -50.0])}),
    ("pow_zero_base_integer_exponent", "x**3", {"x": ([], 0.0)}),
    ("cosh_large", "cosh(x)", {"x": ([], 50.0)}),
    ("bce_near_edges", "binary_cross_entropy(p, y)", {"p": ([2], [0.001, 0.999]), "y": ([2], [1.0, 0.0])}),
]

BINARY = {"add": "x + y", "sub": "x - y", "mul": "x * y", "div": "x / y", "pow": "x ** y", "atan2": "atan2(x, y)",
          "maximum": "maximum(x, y)", "minimum": "minimum(x, y)"}
BINARY_DOMAINS = {"div": ((-1, 1), (0.5, 2)), "pow": ((0.5, 2), (-2, 2)), "atan2": ((-1, 1), (0.5, 2))}
BROADCAST_PAIRS = [([3, 4], [4]), ([3, 1], [1, 4]), ([2, 3, 4], [3, 1]), ([], [3])]

MATMUL = [([3], [3]), ([2, 3], [3]), ([3], [3, 4]), ([2, 3], [3, 4]), ([5, 2, 3], [3, 4]), ([5, 2, 3], [5, 3, 4]),
          ([2, 1, 3, 4], [5, 4, 2])]

REDUCTIONS = [
    ("sum_dim0", "sum(x, dim=0)", [3, 4]), ("sum_dim_neg1_keepdim", "sum(x, dim=-1, keepdim=True)", [3, 4]),
    ("sum_dims_tuple", "sum(x, dim=(0, 2))", [2, 3, 4]), ("mean_all", "mean(x)", [2, 3, 4]),
    ("mean_dim1", "mean(x, dim=1)", [2, 3, 4]), ("mean_keepdim_broadcast", "x - mean(x, dim=1, keepdim=True)",
                                                   [3, 4]),
    ("logsumexp_all", "logsumexp(x)", [3, 4]), ("logsumexp_dim1", "logsumexp(x, dim=1)", [3, 4]),
    ("logsumexp_keepdim", "logsumexp(x, dim=0, keepdim=True)", [2, 3, 4]),
    ("softmax_dim0", "softmax(x, dim=0)", [3, 4]), ("softmax_last", "softmax(x, dim=-1)", [2, 3, 4]),
    ("softmax_middle", "softmax(x, dim=1)", [2, 3, 4]), ("log_softmax_dim1", "log_softmax(x, dim=1)", [3, 4]),
    ("log_softmax_3d", "log_softmax(x, dim=0)", [2, 3, 4]), ("transpose_2d", "x.T", [3, 4]),
    ("transpose_3d", "x.T", [2, 3, 4]), ("sum_scalar", "sum(x)", []),
]

NETWORKS = [
    ("mlp_tanh_mse", "mean((tanh(x @ w1 + b1) @ w2 + b2 - y)**2)",
     {"x": [8, 5], "w1": [5, 6], "b1": [6], "w2": [6, 3], "b2": [3], "y": [8, 3]}, ["x", "y"]),
    ("mlp_relu_mse_loss", "mse_loss(relu(x @ w1 + b1) @ w2 + b2, y)",
     {"x": [8, 5], "w1": [5, 16], "b1": [16], "w2": [16, 2], "b2": [2], "y": [8, 2]}, ["x", "y"]),
    ("mlp_gelu", "sum(gelu(x @ w1) @ w2)", {"x": [4, 6], "w1": [6, 8], "w2": [8, 2]}, []),
    ("softmax_cross_entropy", "-mean(sum(y * log_softmax(x @ w + b, dim=1), dim=1))",
     {"x": [6, 4], "w": [4, 5], "b": [5], "y": [6, 5]}, ["x", "y"]),
    ("logistic_regression_bce", "binary_cross_entropy(sigmoid(x @ w + b), y)",
     {"x": [10, 3], "w": [3], "b": [], "y": ([10], [0.0, 1.0])}, ["x", "y"]),
    ("attention_head", "sum(softmax(q @ k.T / sqrt(4.0), dim=-1) @ v)", {"q": [3, 4], "k": [5, 4], "v": [5, 2]}, []),
    ("layer_norm_like", "sum((x - mean(x, dim=1, keepdim=True)) * rsqrt(mean((x - mean(x, dim=1, keepdim=True))**2,"
     " dim=1, keepdim=True) + 0.00001) * g)", {"x": [4, 6], "g": [6]}, []),
    ("silu_gate", "sum(silu(x @ w1) * (x @ w2))", {"x": [3, 4], "w1": [4, 5], "w2": [4, 5]}, []),
    ("elu_softplus_stack", "mean(softplus(elu(x @ w) @ v))", {"x": [5, 3], "w": [3, 4], "v": [4, 2]}, []),
    ("mse_large_64x100x100", "mean((x @ w + b - y)**2)", {"x": [64, 100], "w": [100, 100], "b": [100],
                                                           "y": [64, 100]}, ["x", "y"]),
    ("linear_regression_half_squared", "mean(0.5 * (y - (x @ w + b))**2)", {"x": [20, 2], "w": [2], "b": [],
                                                                             "y": [20]}, ["x", "y"]),
    ("polynomial", "sum(3*x**3 - 2*x**2 + x - 7)", {"x": [6]}, []),
    ("rational", "sum((x**2 + 1) / (x**2 + 2))", {"x": [3, 3]}, []),
    ("trig_mix", "sum(sin(x) * cos(y) + tan(x * y) / 4)", {"x": [4], "y": [4]}, []),
    ("hyperbolic_chain", "sum(tanh(sinh(x)) + asinh(cosh(x) - 1))", {"x": [2, 3]}, []),
]


# name, expr, vars {name: spec}; a spec is a shape, or (shape, value), or a dict of keys
MASKS = [
    ("mask_relu_scalar", "x * (x > 0)", {"x": []}),
    ("mask_relu_3x4", "x * (x > 0)", {"x": [3, 4]}),
    ("mask_count_sum", "sum(x > 0.25) * x", {"x": [5]}),
    ("mask_count_mean_2x3x4", "mean(x <= y) + sum(x * (x >= y))", {"x": [2, 3, 4], "y": [3, 1]}),
    ("mask_eq_ne", "sum(x * (x != y) + 2 * x * (x == y))", {"x": ([4], [1.0, 2.0, 3.0, 4.0]),
                                                           "y": ([4], [1.0, 0.0, 3.0, 5.0])}),
    ("mask_and_or_not", "sum(where((x > 0) & ~(y < 0.5) | (x < -0.75), sin(x), y * 2))", {"x": [3, 4], "y": [4]}),
    ("mask_where_broadcast_3d", "where(x > y, x * y, x - y)", {"x": [2, 3, 4], "y": [3, 1]}),
    ("mask_where_scalar_branches", "sum(where(x > 0, 1.5, -0.5) * x)", {"x": [3, 4]}),
    ("mask_where_branch_of_other_var", "where(c > 0, a, b)", {"c": {"shape": [2, 3], "requires_grad": False},
                                                              "a": [2, 3], "b": [3]}),
    ("mask_where_4d", "sum(where(x < 0.1, exp(x), 1 + x) * w)", {"x": [2, 2, 3, 2], "w": [3, 2]}),
    ("mask_where_tie_exact", "where(x >= y, x, 2 * y)", {"x": ([3], [1.0, 2.0, 0.0]), "y": ([3], [1.0, 1.0, 0.0])}),
    ("mask_where_safe_log", "sum(where(x > 0, log(abs(x) + 1e-3), x))", {"x": ([4], [0.5, -0.5, 0.0, 2.0])}),
    ("mask_boundary_after_rounding", "sum(where(sin(x) > 0.5, x, -x))",
     {"x": ([3], [0.5235987755982988, 0.52359878, 1.0])}),
    ("mask_of_masks_in_arithmetic", "sum((x > 0) * (y > 0) * x * y + (x > y))", {"x": [3, 4], "y": [3, 4]}),
    ("mask_where_nested", "where(x > 0.5, x ** 2, where(x < -0.5, -x, 0.25 * x))", {"x": [6]}),
    ("mask_large_values", "sum(where(x > 1000.0, x / 1000.0, exp(x / 1000.0)))",
     {"x": ([4], [999.0, 1000.0, 1001.0, -1e6])}),
]


ELEMENTWISE = {  # op call -> domain; over 0-D to 4-D
    "square(x)": (-2, 2), "reciprocal(x)": (0.5, 2), "log2(x)": (0.1, 3), "log10(x)": (0.1, 3), "exp2(x)": (-3, 3),
    "hardtanh(x)": (-2, 2), "hardtanh(x, -0.5, 2.0)": (-3, 3), "relu6(x)": (-2, 8),
    "hardswish(x)": (-5, 5), "mish(x)": (-4, 4), "logsigmoid(x)": (-4, 4), "selu(x)": (-2, 2),
    "celu(x, alpha=0.5)": (-2, 2), "softsign(x)": (-3, 3), 'gelu(x, approximate="tanh")': (-3, 3),
    "x * floor(3 * x)": (-2, 2), "x * ceil(x)": (-2, 2), "x * round(2.5 * x)": (-2, 2), "x * trunc(2 * x)": (-2, 2),
    "x * sign(x)": (-1, 1), "x.detach() * x": (-1, 1), "detach(x) + x ** 2": (-1, 1),
    "clamp(x, min=-0.5, max=0.5)": (-1, 1), "clamp(x, min=0)": (-1, 1), "clamp(x, max=0.25)": (-1, 1),
}
SHAPES_4D = [[], [5], [3, 4], [2, 3, 4], [2, 1, 3, 2]]
ELEMENTWISE_BINARY = {"logaddexp(x, y)": ((-3, 3), (-3, 3)), "hypot(x, y)": ((-1, 1), (0.5, 2)),
                      "xlogy(x, y)": ((-1, 1), (0.1, 3)), "clamp(x, y, 0.75)": ((-1, 1), (-1, 0.5)),
                      "clamp(x, min=-0.5, max=y)": ((-1, 1), (-0.25, 1))}
# torch's hardsigmoid backward multiplies by 1/6 rounded to float32 (aten's hardsigmoid_backward): its float64
# gradient is float32-accurate (a relative error of 3e-8), which diffcheck rightly reports; these cases say so.
HARDSIGMOID = {"tolerance": {"reason": "torch's hardsigmoid backward uses 1/6 as a float32 constant, so its float64 "
                                       "gradient is only float32-accurate", "float64": {"rtol": 1e-7}},
               "dtypes": ["float64"]}
ELEMENTWISE_SPECIAL = [
    ("hardtanh_at_bounds", "hardtanh(x)", {"x": ([4], [-1.0, 1.0, 0.0, 2.0])}),
    ("relu6_at_bounds", "relu6(x)", {"x": ([4], [0.0, 6.0, 3.0, 7.0])}),
    ("hardsigmoid_at_bounds", "hardsigmoid(x)", {"x": ([4], [-3.0, 3.0, 0.0, 4.0])}, {"dtypes": ["float32"]}),
    ("hardsigmoid_at_bounds_float64", "hardsigmoid(x)", {"x": ([4], [-3.0, 3.0, 0.0, 4.0])}, HARDSIGMOID),
    ("hardswish_at_bounds", "hardswish(x)", {"x": ([4], [-3.0, 3.0, 0.0, -4.0])}),
    ("selu_celu_at_zero", "selu(x) + celu(x)", {"x": ([2], [0.0, -1.0])}),
    ("clamp_ties_tensor_bounds", "clamp(x, min=lo, max=1.0)", {"x": ([3], [0.5, 1.0, -0.5]),
                                                               "lo": ([3], [0.5, 0.0, -0.5])}),
    ("clamp_min_above_max", "clamp(x, min=0.5, max=-0.5)", {"x": ([3], [0.0, 1.0, -1.0])}),
    ("floor_at_integers", "x * floor(x)", {"x": ([4], [1.0, -2.0, 0.5, 2.999])}),
    ("round_half_to_even", "x * round(x)", {"x": ([4], [0.5, 1.5, 2.5, -0.5])}),
    ("sign_at_zero", "x * sign(x)", {"x": ([3], [0.0, -2.0, 2.0])}),
    ("floor_near_step_after_rounding", "sum(x * floor(10 * sin(x)))", {"x": ([2], [0.5235987755982988, 0.25])}),
    ("logaddexp_cancels_to_zero", "logaddexp(a, x)", {"a": ([3], [-1.5, -1.5, -1.5]),
                                                       "x": ([3], [-0.25248003005981445, -0.25248, -0.25])}),
    ("logaddexp_far_apart", "logaddexp(x, y)", {"x": ([3], [100.0, -100.0, 0.0]), "y": ([3], [-100.0, 100.0, 0.0])}),
    ("logsigmoid_far", "logsigmoid(x)", {"x": ([3], [-800.0, 800.0, -30.0])}),
    ("mish_far", "mish(x)", {"x": ([3], [-50.0, 30.0, 100.0])}),
    ("softsign_large", "softsign(x)", {"x": ([2], [1e6, -1e6])}),
    ("xlogy_zero_x", "xlogy(x, y)", {"x": ([3], [0.0, 1.0, -1.0]), "y": ([3], [0.5, 2.0, 3.0])}),
    ("hypot_large", "hypot(x, y)", {"x": ([2], [1e200, 3.0]), "y": ([2], [1e200, 4.0])}),
    ("gelu_tanh_far", 'gelu(x, approximate="tanh")', {"x": ([3], [-10.0, 10.0, -30.0])}),
    ("exp2_large", "exp2(x)", {"x": ([], 100.0)}),
    ("detach_blocks_the_path", "sum(x * detach(exp(x)))", {"x": ([3], [0.0, 1.0, -1.0])}),
]


# family 3: name, expr, vars (specs as in MASKS); every float dtype
REDUCTIONS_TORCH = [
    ("amax_all_3x4", "amax(x)", {"x": [3, 4]}), ("amax_dim1_2x3x4", "amax(x, dim=1)", {"x": [2, 3, 4]}),
    ("amin_dims_keepdim_4d", "amin(x, dim=(0, 2), keepdim=True)", {"x": [2, 3, 2, 2]}),
    ("amax_scalar", "amax(x)", {"x": []}), ("amin_5", "amin(x, dim=0)", {"x": [5]}),
    ("amax_ties_share_equally", "amax(x, dim=1) * 2", {"x": ([2, 3], [[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])}),
    ("amin_tie_after_rounding", "amin(x - y, dim=0)", {"x": ([2], [0.1, 0.3]), "y": ([2], [0.1, 0.3])}),
    ("prod_all", "prod(x)", {"x": {"shape": [3, 4], "domain": [0.5, 1.5]}}),
    ("prod_dim_keepdim_3d", "prod(x, dim=-1, keepdim=True)", {"x": {"shape": [2, 3, 4], "domain": [-1.5, -0.5]}}),
    ("cumsum_1d", "cumsum(x, dim=0)", {"x": [5]}), ("cumsum_dim1_3d", "cumsum(x, dim=1) * w", {"x": [2, 3, 4],
                                                                                              "w": [3, 4]}),
    ("cumsum_4d_last", "sum(cumsum(x, -1) ** 2)", {"x": [2, 2, 3, 2]}),
    ("cumprod_1d", "cumprod(x, dim=0)", {"x": {"shape": [5], "domain": [0.5, 1.5]}}),
    ("cumprod_signs_3x4", "cumprod(x, dim=1)", {"x": {"shape": [3, 4], "domain": [-1.5, -0.5]}}),
    ("var_all", "var(x)", {"x": [3, 4]}), ("var_dim_correction0", "var(x, dim=1, correction=0)", {"x": [2, 3, 4]}),
    ("std_dims_keepdim", "x / std(x, dim=(0, 1), keepdim=True)", {"x": [2, 3, 4]}),
    ("std_4d", "std(x, dim=-1)", {"x": [2, 2, 3, 3]}),
    ("var_constant_row", "var(x, dim=1)", {"x": ([2, 3], [[1.0, 1.0, 1.0], [0.0, 1.0, 2.0]])}),
    ("norm_all", "norm(x)", {"x": [3, 4]}), ("norm_dim_keepdim", "x / norm(x, dim=-1, keepdim=True)",
                                                {"x": [2, 3, 4]}),
    ("norm_p1", "norm(x, p=1, dim=0)", {"x": [3, 4]}), ("norm_p3_4d", "norm(x, 3.0)", {"x": [2, 1, 3, 2]}),
    ("norm_tiny_and_huge", "norm(x)", {"x": ([3], [1e-200, 3e-200, 4e-200])}),
    ("logsumexp_4d", "logsumexp(x, dim=(1, 3))", {"x": [2, 3, 2, 2]}),
    ("sort_last", "sort(x) * w", {"x": [3, 4], "w": [4]}),
    ("sort_descending_dim0", "sort(x, dim=0, descending=True) * w", {"x": [3, 4], "w": [3, 1]}),
    ("sort_1d_exp", "exp(sort(x, 0))", {"x": [6]}),
    ("sort_ties", "sort(x) * w", {"x": ([4], [1.0, 3.0, 3.0, -2.0]), "w": ([4], [1.0, 2.0, 3.0, 4.0])}),
    ("sort_4d", "sum(sort(x, dim=2) * w)", {"x": [2, 2, 3, 2], "w": [3, 2]}),
    ("cummax_like_layer_stats", "mean((x - amax(x, dim=1, keepdim=True)) / (std(x, dim=1, keepdim=True) + 1))",
     {"x": [4, 5]}),
]


SHAPE_CASES = [
    ("reshape_2d", "reshape(x, [2, 6]) * w", {"x": [3, 4], "w": [6]}),
    ("reshape_minus_one_4d", "sum(reshape(x, [-1, 3]) ** 2)", {"x": [2, 1, 3, 2]}),
    ("reshape_scalar", "reshape(x, [1, 1]) * 2", {"x": []}),
    ("flatten_all", "flatten(x) * w", {"x": [2, 3, 4], "w": [24]}),
    ("flatten_middle", "flatten(x, start_dim=1, end_dim=2) @ w", {"x": [2, 3, 4], "w": [12, 2]}),
    ("permute_3d", "permute(x, [2, 0, 1]) * w", {"x": [2, 3, 4], "w": [3]}),
    ("permute_4d", "sum(permute(x, (3, 1, 0, 2)) * w)", {"x": [2, 1, 3, 2], "w": [2, 3]}),
    ("transpose_dims", "transpose(x, 0, 2) * w", {"x": [2, 3, 4], "w": [2]}),
    ("mT_batched_matmul", "x.mT @ x", {"x": [2, 3, 4]}),
    ("unsqueeze_broadcast", "unsqueeze(x, 1) - unsqueeze(x, 0)", {"x": [4]}),
    ("unsqueeze_negative", "unsqueeze(x, -1) * y", {"x": [3], "y": [3, 2]}),
    ("squeeze_all_and_one", "squeeze(x) + squeeze(y, 0)", {"x": [1, 4, 1], "y": [1, 4]}),
    ("squeeze_non_one_is_noop", "squeeze(x, 0) * 2", {"x": [3, 4]}),
    ("expand_repeats_accumulate", "expand(x, [3, -1, 4]) * w", {"x": [1, 2, 1], "w": [3, 2, 4]}),
    ("expand_new_leading", "sum(expand(x, [5, 4]) ** 2)", {"x": [4]}),
    ("cat_dim0", "cat([x, 2 * y, x], dim=0) * w", {"x": [2, 3], "y": [1, 3], "w": [3]}),
    ("cat_last_3d", "sum(cat([x, exp(y)], dim=-1) ** 2)", {"x": [2, 3, 1], "y": [2, 3, 2]}),
    ("stack_dim1", "stack([x, y, x * y], dim=1) * w", {"x": [2, 3], "y": [2, 3], "w": [3, 1]}),
    ("flip_dims", "flip(x, [0, 2]) * w", {"x": [2, 3, 4], "w": [4]}),
    ("tril_triu", "tril(x) + 2 * triu(x, diagonal=1) + triu(x, -1) * w", {"x": [2, 3, 3], "w": [3]}),
    ("tril_rectangular", "tril(x, diagonal=-1)", {"x": [3, 5]}),
    ("index_int", "x[1] * w", {"x": [3, 4], "w": [4]}),
    ("index_slices", "x[:, 1:3] * x[:, ::2]", {"x": [3, 4]}),
    ("index_negative_and_none", "x[-1, None] + x[None, :, -2].mT", {"x": [4, 4]}),
    ("index_ellipsis_4d", "sum(x[..., 0] * x[0, ...][..., 1])", {"x": [2, 2, 3, 2]}),
    ("index_repeated_reads_accumulate", "x[0] * x[0] + x[0:1, :] * x", {"x": [3, 4]}),
    ("index_scalar_entry", "x[1, 2] * x", {"x": [3, 4]}),
    ("shapes_in_a_network", "sum(softmax(reshape(x, [2, 3, 4]).mT @ w, dim=-1)[..., 0])",
     {"x": [24], "w": [3, 2]}),
    ("batched_matmul_broadcast", "sum((a @ b) ** 2)", {"a": [2, 1, 3, 4], "b": [5, 4, 2]}),
]


EINSUM_CASES = [
    ("einsum_bmm", 'einsum("bij,bjk->bik", a, b)', {"a": [2, 3, 4], "b": [2, 4, 5]}),
    ("einsum_outer", 'einsum("i,j->ij", a, b)', {"a": [3], "b": [4]}),
    ("einsum_sum_axis_and_full", 'einsum("ij->j", c) + einsum("ij,ij->", c, c)', {"c": [3, 4]}),
    ("einsum_implicit_output", 'einsum("ij,jk", a, b)', {"a": [2, 3], "b": [3, 2]}),
    ("einsum_index_only_in_one_operand", 'einsum("ijk,j->i", a, b)', {"a": [2, 3, 4], "b": [3]}),
    ("einsum_three_operands", 'einsum("ij,jk,kl->il", a, b, c)', {"a": [2, 3], "b": [3, 4], "c": [4, 2]}),
    ("einsum_attention_4d", 'sum(einsum("bhqk,bhkd->bhqd", softmax(einsum("bhqd,bhkd->bhqk", q, k), dim=-1), v))',
     {"q": [2, 2, 3, 4], "k": [2, 2, 5, 4], "v": [2, 2, 5, 4]}),
    ("einsum_scalar_operand", 'einsum(",i->i", s, a)', {"s": [], "a": [4]}),
    ("matmul_batch_broadcast_4d", "a @ b", {"a": [2, 1, 3, 4], "b": [1, 5, 4, 2]}),
    ("matmul_batch_vector", "a @ b", {"a": [2, 3, 4], "b": [4]}),
    ("matmul_vector_batch", "a @ b", {"a": [4], "b": [2, 4, 3]}),
]


INT = "int64"
INDEX_CASES = [  # integer and boolean inputs, indexing, losses
    ("embedding_rows", "sum(embedding(t, w) * v)", {"t": {"shape": [8], "dtype": INT, "domain": [0, 5]},
                                                     "w": [5, 3], "v": [3]}),
    ("embedding_repeated_indices_accumulate", "embedding(t, w)",
     {"t": {"shape": [2, 3], "dtype": INT, "value": [[1, 1, 1], [0, 4, 1]]}, "w": [5, 2]}),
    ("subscript_by_int_var", "x[t] * 2", {"t": {"shape": [4], "dtype": INT, "domain": [0, 3]}, "x": [3, 4]}),
    ("subscript_by_int_var_1d", "x[t]", {"t": {"shape": [6], "dtype": INT, "value": [0, 2, 2, 1, 0, 0]}, "x": [3]}),
    ("index_select_dim1", "index_select(x, 1, t) * w", {"t": {"shape": [5], "dtype": INT, "domain": [0, 4]},
                                                        "x": [3, 4], "w": [5]}),
    ("gather_dim1", "gather(x, 1, g)", {"g": {"shape": [2, 4], "dtype": INT, "domain": [0, 3]}, "x": [2, 3]}),
    ("gather_dim0_repeats", "sum(gather(x, 0, g) ** 2)",
     {"g": {"shape": [3, 2], "dtype": INT, "value": [[0, 0], [0, 1], [0, 1]]}, "x": [2, 2]}),
    ("cross_entropy_classes", "cross_entropy(z, t)", {"z": {"shape": [6, 4], "domain": [-3, 3]},
                                                      "t": {"shape": [6], "dtype": INT, "domain": [0, 4]}}),
    ("cross_entropy_smoothing_sum", 'cross_entropy(z, t, label_smoothing=0.1, reduction="sum")',
     {"z": {"shape": [5, 3], "domain": [-3, 3]}, "t": {"shape": [5], "dtype": INT, "domain": [0, 3]}}),
    ("cross_entropy_none_1d", 'cross_entropy(z, t, reduction="none")',
     {"z": {"shape": [4], "domain": [-3, 3]}, "t": {"shape": [], "dtype": INT, "value": 2}}),
    ("cross_entropy_probabilities", "cross_entropy(z, softmax(q, dim=-1), label_smoothing=0.2)",
     {"z": {"shape": [3, 4], "domain": [-3, 3]}, "q": {"shape": [3, 4], "requires_grad": False}}),
    ("cross_entropy_mlp", "cross_entropy(tanh(x @ w1) @ w2, t)",
     {"x": [8, 5], "w1": [5, 6], "w2": [6, 3], "t": {"shape": [8], "dtype": INT, "domain": [0, 3]}}),
    ("nll_loss_mean", "nll_loss(log_softmax(z, dim=1), t)", {"z": [6, 4], "t": {"shape": [6], "dtype": INT,
                                                                                 "domain": [0, 4]}}),
    ("bool_mask_var", "where(m, x, -x) + x * m + x * (m & (x > 0))", {"m": {"shape": [3, 4], "dtype": "bool"},
                                                                      "x": [3, 4]}),
    ("bool_mask_value", "sum(x * ~m)", {"m": {"shape": [3], "dtype": "bool", "value": [True, False, True]},
                                        "x": [3]}),
    ("mse_loss_reductions", 'mse_loss(a, b, reduction="sum") + sum(mse_loss(a, b, reduction="none"))',
     {"a": [3, 4], "b": [4]}),
    ("l1_smooth_huber", 'l1_loss(a, b) + smooth_l1_loss(a, b, beta=0.5) + huber_loss(a, b, delta=0.3, reduction="sum")',
     {"a": {"shape": [3, 4], "domain": [-2, 2]}, "b": [3, 4]}),
    ("smooth_l1_at_beta", "smooth_l1_loss(a, b)", {"a": ([3], [1.0, 0.0, -2.0]), "b": ([3], [0.0, 0.0, -1.0])}),
    ("bce_with_logits", 'binary_cross_entropy_with_logits(x, y) + binary_cross_entropy(sigmoid(x), y, reduction="sum")',
     {"x": {"shape": [3, 4], "domain": [-3, 3]}, "y": {"shape": [3, 4], "domain": [0, 1]}}),
    ("bce_with_logits_far", 'binary_cross_entropy_with_logits(x, y, reduction="none")',
     {"x": ([3], [40.0, -40.0, 0.0]), "y": ([3], [0.0, 1.0, 0.5])}),
    ("kl_div_batchmean_log_target", 'kl_div(log_softmax(x, dim=1), softmax(y, dim=1), reduction="batchmean") + '
     'kl_div(log_softmax(x, dim=1), log_softmax(y, dim=1), log_target=True, reduction="sum")', {"x": [3, 4],
                                                                                                "y": [3, 4]}),
    ("cosine_similarity_normalize", "cosine_similarity(a, b) * w + sum(normalize(a, dim=-1), dim=1)",
     {"a": [3, 4], "b": [3, 4], "w": [3]}),
    ("cosine_similarity_3d_broadcast", "cosine_similarity(a, b, dim=-1)", {"a": [2, 3, 4], "b": [3, 4]}),
]


NN_CASES = [
    ("linear_bias", "linear(x, w, b)", {"x": [4, 3], "w": [5, 3], "b": [5]}),
    ("linear_no_bias_3d", "sum(linear(x, w) ** 2)", {"x": [2, 4, 3], "w": [5, 3]}),
    ("linear_vector_weight", "linear(x, w)", {"x": [4, 3], "w": [3]}),
    ("layer_norm_affine", "layer_norm(x, [6], g, b, eps=1e-05)", {"x": [4, 6], "g": [6], "b": [6]}),
    ("layer_norm_plain_2d_shape", "sum(layer_norm(x, [2, 3]) * w)", {"x": [4, 2, 3], "w": [2, 3]}),
    ("layer_norm_near_constant_row", "layer_norm(x, [3])", {"x": ([2, 3], [[1.0, 1.001, 0.999], [0.0, 1.0, 2.0]])}),
    ("rms_norm_weight", "rms_norm(x, [6], g, eps=1e-06)", {"x": [4, 6], "g": [6]}),
    ("rms_norm_3d", "sum(rms_norm(x, [4], eps=1e-06) ** 2)", {"x": [2, 3, 4]}),
    ("sdpa", "scaled_dot_product_attention(q, k, v)", {"q": [2, 3, 4], "k": [2, 5, 4], "v": [2, 5, 2]}),
    ("sdpa_causal_scaled_4d", "sum(scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3))",
     {"q": [2, 2, 3, 4], "k": [2, 2, 3, 4], "v": [2, 2, 3, 2]}),
    ("conv1d_stride_padding", "conv1d(x, w, b, stride=2, padding=1)", {"x": [2, 3, 7], "w": [4, 3, 3], "b": [4]}),
    ("conv1d_dilation", "sum(conv1d(x, w, dilation=2) ** 2)", {"x": [1, 2, 8], "w": [3, 2, 3]}),
    ("conv2d_padding_dilation", "sum(conv2d(x, w, padding=[1, 0], dilation=[1, 2]) ** 2)",
     {"x": [2, 2, 5, 6], "w": [3, 2, 3, 2]}),
    ("conv2d_groups_stride", "conv2d(x, w, b, stride=2, groups=2)", {"x": [1, 4, 5, 5], "w": [2, 2, 3, 3],
                                                                      "b": [2]}),
    ("conv2d_then_relu_pool", "sum(max_pool2d(relu(conv2d(x, w, b, padding=1)), 2))",
     {"x": [2, 1, 6, 6], "w": [2, 1, 3, 3], "b": [2]}),
    ("avg_pool2d", "sum(avg_pool2d(x, 2) * 3)", {"x": [2, 2, 4, 5]}),
    ("max_pool2d_overlap_padding", "sum(max_pool2d(x, [3, 2], stride=1, padding=1))", {"x": [2, 2, 4, 5]}),
    ("max_pool2d_ties", "max_pool2d(x, 2)", {"x": ([1, 1, 2, 2], [[[[1.0, 1.0], [0.0, 1.0]]]])}),
]


def spec(s) -> dict:
    if isinstance(s, dict):
        return s
    if isinstance(s, tuple):
        return {"shape": s[0], "value": s[1]}
    return {"shape": s}


def toml_value(v) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(e) for e in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, int):
        return f"{float(v)!r}"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def case(name, expr, vars_, description="", extra=None) -> str:
    lines = ["[[case]]", f"name = {toml_value(name)}", f"expr = {toml_value(expr)}"]
    if description:
        lines.append(f"description = {toml_value(description)}")
    for key, value in (extra or {}).items():
        lines.append(f"{key} = {toml_value(value)}")
    for vname, spec in vars_.items():
        items = ", ".join(f"{k} = {toml_value(v) if k != 'shape' else '[' + ', '.join(map(str, v)) + ']'}"
                          for k, v in spec.items())
        lines.append(f"vars.{vname} = {{ {items} }}")
    return "\n".join(lines) + "\n"


def shape_name(shape) -> str:
    return "x".join(map(str, shape)) or "scalar"


def write(filename: str, header: str, cases: list[str]) -> int:
    text = f"# {header}\n# Generated by cases/ops/generate.py -- edit the tables there, not this file.\n\n"
    (HERE / filename).write_text(text + "\n".join(cases))
    return len(cases)


def main() -> None:
    total = 0
    unary = []
    for op, dom in UNARY.items():
        for shape in SHAPES:
            expr = f"sum({op}(x))" if len(shape) == 3 else f"{op}(x)"
            unary.append(case(f"{op}_{shape_name(shape)}", expr, {"x": {"shape": shape, "domain": list(dom)}}))
    total += write("unary.toml", "Every unary op over its usual domain, scalar to 3-D.", unary)
    total += write("special_values.toml", "Special values: saturation, overflow, tiny inputs, kinks, domain edges.",
                   [case(n, e, {k: {"shape": s, "value": v} for k, (s, v) in vs.items()}) for n, e, vs in SPECIAL])
    binary = []
    for op, expr in BINARY.items():
        dx, dy = BINARY_DOMAINS.get(op, ((-1, 1), (-1, 1)))
        for sx, sy in BROADCAST_PAIRS:
            binary.append(case(f"{op}_{shape_name(sx)}_{shape_name(sy)}", expr,
                               {"x": {"shape": sx, "domain": list(dx)}, "y": {"shape": sy, "domain": list(dy)}}))
    total += write("binary_broadcast.toml", "Binary ops over broadcasting shape pairs.", binary)
    mm = [case(f"matmul_{shape_name(a)}_{shape_name(b)}", "a @ b", {"a": {"shape": a}, "b": {"shape": b}})
          for a, b in MATMUL]
    mm.append(case("matmul_chain_transpose", "sum((a @ b.T) @ c)", {"a": {"shape": [3, 4]}, "b": {"shape": [5, 4]},
                                                                    "c": {"shape": [5, 2]}}))
    total += write("matmul.toml", "Every matmul form: 1-D, 2-D, batched, broadcast batches.", mm)
    red = [case(n, e, {"x": {"shape": s, "domain": [-3.0, 3.0]}}) for n, e, s in REDUCTIONS]
    total += write("reductions.toml", "Reductions, softmax family and transposes with dims and keepdim.", red)
    losses = [
        case("mse_loss_same_shape", "mse_loss(a, b)", {"a": {"shape": [4, 3]}, "b": {"shape": [4, 3]}}),
        case("mse_loss_target_no_grad", "mse_loss(a, b)", {"a": {"shape": [5]},
                                                            "b": {"shape": [5], "requires_grad": False}}),
        case("bce_probabilities", "binary_cross_entropy(p, y)", {"p": {"shape": [6], "domain": [0.05, 0.95]},
                                                                 "y": {"shape": [6], "domain": [0.0, 1.0]}}),
        case("bce_2d", "binary_cross_entropy(p, y)", {"p": {"shape": [3, 4], "domain": [0.05, 0.95]},
                                                      "y": {"shape": [3, 4], "domain": [0.0, 1.0],
                                                            "requires_grad": False}}),
    ]
    total += write("losses.toml", "Losses.", losses)
    nets = []
    for name, expr, shapes, fixed in NETWORKS:
        vars_ = {}
        for v, s in shapes.items():
            shape, domain = s if isinstance(s, tuple) else (s, None)
            vars_[v] = {"shape": shape, **({"domain": list(domain)} if domain else {}),
                        **({"requires_grad": False} if v in fixed and name.startswith("mse_large") else {})}
        nets.append(case(name, expr, vars_))
    total += write("networks.toml", "Compositions: small networks, losses over matmuls, polynomial chains.", nets)
    total += write("masks.toml", "Comparisons, masks (& | ~, 0/1 in arithmetic, counts) and where(); ties and jumps.",
                   [case(n, e, {k: spec(v) for k, v in vs.items()}, extra={"dtypes": ["float64", "float32",
                                                                                       "float16", "bfloat16"]})
                    for n, e, vs in MASKS])
    ew = []
    for call, dom in ELEMENTWISE.items():
        stem = call.split("(")[0].replace(".", "_").replace(" ", "")
        stem = {"x * floor": "floor", "x * ceil": "ceil"}.get(stem, stem)
        label = "".join(ch if ch.isalnum() else "_" for ch in call).strip("_")
        for shape in SHAPES_4D:
            expr = f"sum({call})" if len(shape) >= 3 else call
            ew.append(case(f"{label}_{shape_name(shape)}", expr, {"x": {"shape": shape, "domain": list(dom)}},
                           extra={"dtypes": ["float64", "float32", "float16", "bfloat16"]}))
    for call, (dx, dy) in ELEMENTWISE_BINARY.items():
        label = "".join(ch if ch.isalnum() else "_" for ch in call).strip("_")
        for sx, sy in BROADCAST_PAIRS:
            ew.append(case(f"{label}_{shape_name(sx)}_{shape_name(sy)}", call,
                           {"x": {"shape": sx, "domain": list(dx)}, "y": {"shape": sy, "domain": list(dy)}},
                           extra={"dtypes": ["float64", "float32", "float16", "bfloat16"]}))
    for shape in SHAPES_4D:
        for label, extra in (("", {"dtypes": ["float32", "float16", "bfloat16"]}), ("_float64", HARDSIGMOID)):
            ew.append(case(f"hardsigmoid_x_{shape_name(shape)}{label}", "sum(hardsigmoid(x))" if len(shape) >= 3
                           else "hardsigmoid(x)", {"x": {"shape": shape, "domain": [-5.0, 5.0]}}, extra=extra))
    ew += [case(n, e, {k: spec(v) for k, v in vs.items()}, extra=x[0] if x else None)
           for n, e, vs, *x in ELEMENTWISE_SPECIAL]
    total += write("elementwise.toml", "Elementwise ops: torch's activations, rounding (zero gradient, jumps), clamp, "
                   "detach; 0-D to 4-D, broadcasting, bounds, special values.", ew)
    total += write("reductions_torch.toml", "torch reductions and scans: amax amin prod cumsum cumprod var std norm "
                   "sort; dims, keepdim, 0-D to 4-D, ties, special values.",
                   [case(n, e, {k: spec(v) for k, v in vs.items()}, extra={"dtypes": ["float64", "float32",
                                                                                       "float16", "bfloat16"]})
                    for n, e, vs in REDUCTIONS_TORCH])
    total += write("shapes.toml", "Shape ops: reshape flatten permute transpose .mT unsqueeze squeeze expand cat stack "
                   "flip tril triu and subscripts; 0-D to 4-D, repeated entries accumulate.",
                   [case(n, e, {k: spec(v) for k, v in vs.items()}, extra={"dtypes": ["float64", "float32",
                                                                                       "float16", "bfloat16"]})
                    for n, e, vs in SHAPE_CASES])
    total += write("einsum.toml", "einsum (explicit and implicit outputs, several operands) and matmul with batch "
                   "dims broadcast as torch does.",
                   [case(n, e, {k: spec(v) for k, v in vs.items()}, extra={"dtypes": ["float64", "float32",
                                                                                       "float16", "bfloat16"]})
                    for n, e, vs in EINSUM_CASES])
    total += write("indexing_losses.toml", "int64 and bool inputs, embedding, x[idx], index_select, gather (repeated "
                   "indices accumulate), cross_entropy with class indices, nll_loss, and losses with reduction=.",
                   [case(n, e, {k: spec(v) for k, v in vs.items()}, extra={"dtypes": ["float64", "float32",
                                                                                       "float16", "bfloat16"]})
                    for n, e, vs in INDEX_CASES])
    total += write("nn.toml", "torch.nn.functional layers: linear, layer_norm, rms_norm, scaled_dot_product_attention, "
                   "conv1d/conv2d (stride, padding, dilation, groups), avg_pool2d/max_pool2d (ties).",
                   [case(n, e, {k: spec(v) for k, v in vs.items()}, extra={"dtypes": ["float64", "float32",
                                                                                       "float16", "bfloat16"]})
                    for n, e, vs in NN_CASES])
    print(f"wrote {total} cases to {HERE}")


if __name__ == "__main__":
    main()
