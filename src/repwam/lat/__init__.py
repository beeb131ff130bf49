"""repwam.lat"""
