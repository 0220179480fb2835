"""esper.urza"""
