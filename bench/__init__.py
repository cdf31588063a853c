"""`make bench`: the system against a floor of bare components, measured in one run.

Every figure the benchmark judges is a ratio to a floor measured minutes earlier on the same
machine by the same load generator, so a slower or busier machine moves both sides together.
"""
