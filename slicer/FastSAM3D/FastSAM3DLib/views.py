"""Slicer view helpers of the FastSAM3D effect: a volume's world geometry and the stroke drawn on a slice view."""

import vtk

import slicer


def world_ijk_to_ras(volume_node):
    """The volume's IJK-to-RAS matrix in world coordinates (parent transforms applied, if linear)."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    transform = volume_node.GetParentTransformNode()
    if transform is not None:
        if not transform.IsTransformToWorldLinear():
            raise ValueError("the volume has a non-linear parent transform: harden it first")
        to_world = vtk.vtkMatrix4x4()
        transform.GetMatrixTransformToWorld(to_world)
        vtk.vtkMatrix4x4.Multiply4x4(to_world, matrix, matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


class StrokeLine:
    """The drawn scribble / lasso on a slice view: a 2D polyline in display coordinates (as the Draw effect shows it)."""

    def __init__(self, scriptedEffect, view):
        self.scriptedEffect, self.view = scriptedEffect, view
        self.points, self.lines = vtk.vtkPoints(), vtk.vtkCellArray()
        self.polydata = vtk.vtkPolyData()
        self.polydata.SetPoints(self.points)
        self.polydata.SetLines(self.lines)
        mapper = vtk.vtkPolyDataMapper2D()
        mapper.SetInputData(self.polydata)
        self.actor = vtk.vtkActor2D()
        self.actor.SetMapper(mapper)
        self.actor.GetProperty().SetColor(1.0, 1.0, 0.0)
        self.actor.GetProperty().SetLineWidth(2)
        scriptedEffect.addActor2D(view, self.actor)
        self.xy = []

    def add(self, xy, closed=False):
        self.xy.append(tuple(xy))
        self._draw(closed)

    def clear(self):
        self.xy = []
        self._draw(False)

    def _draw(self, closed):
        self.points.Reset()
        self.lines.Reset()
        for x, y in self.xy:
            self.points.InsertNextPoint(x, y, 0.0)
        ids = list(range(len(self.xy))) + ([0] if closed and len(self.xy) > 2 else [])
        if len(ids) > 1:
            self.lines.InsertNextCell(len(ids))
            for index in ids:
                self.lines.InsertCellPoint(index)
        self.points.Modified()
        self.polydata.Modified()
        self.view.sliceView().scheduleRender()

    def remove(self, view):
        self.scriptedEffect.removeActor2D(view, self.actor)
