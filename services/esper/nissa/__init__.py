"""esper.nissa"""
