"""repwam.train"""
