"""Baseline networks the paper compares CRN against (Sec. 4): one nn.Module and builder each."""
