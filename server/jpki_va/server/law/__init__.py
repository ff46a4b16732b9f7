"""The rules of the law, one module per rule, each named after what it decides.

DESIGN §6 summarises them; the articles are cited where each rule is applied.
"""
