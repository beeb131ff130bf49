"""repwam.eval"""
