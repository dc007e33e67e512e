"""Named recipes (var.recipes): the reference's recipe table by depth."""
import pytest


# The reference's README training commands: depth -> (--alng, --wpe, --twde; None: the weight decay stays).
REFERENCE_README = {16: (1e-3, 0.1, None), 20: (1e-3, 0.1, None), 24: (1e-4, 0.01, None), 30: (1e-5, 0.01, 0.08),
                    36: (5e-6, 0.01, 0.08)}


def test_the_recipe_table_is_the_reference_readmes():
    from var.recipes import reference_recipe
    for depth, (alng, wpe, twde) in REFERENCE_README.items():
        recipe = reference_recipe(depth)
        assert (recipe.adaln_gamma, recipe.final_lr_ratio, recipe.final_weight_decay) == (alng, wpe, twde)
    with pytest.raises(ValueError, match="depth=0"):
        reference_recipe(0)
