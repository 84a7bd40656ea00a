"""How large VeLO's steps are on each kind of tensor of a Transformer, against AdamW's and ScheduleFreeAdamW's."""
