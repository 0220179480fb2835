"""esper.tezzeret"""
