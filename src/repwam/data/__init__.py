"""repwam.data"""
