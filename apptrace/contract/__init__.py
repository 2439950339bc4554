"""The contract between the capture process and the analysis process.

What crosses from one to the other, and in which shape: the ring-buffer records as the BPF program
writes them (``events``), the annotations capture adds from /proc (``annotations``), and how both are
framed on disk, in a raw capture file (``rawfile``) or in the spool the analysis process follows
(``spool``). Both processes, and ``apptrace replay``, read these with the same code.
"""
