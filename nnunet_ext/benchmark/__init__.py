"""The label-efficiency benchmark: few-label splits, training budgets, metrics and reports."""
