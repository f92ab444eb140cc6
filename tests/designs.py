"""Verilog designs the tests of both flows share: the design-file contract's ports, and
a ring oscillator (a combinational loop both flows must refuse)."""

PORTS = """module user_design (
    input  wire        clk,
    input  wire        rst,
    input  wire [29:0] wb_adr,
    input  wire [31:0] wb_dat_w,
    output reg  [31:0] wb_dat_r,
    input  wire [3:0]  wb_sel,
    input  wire        wb_cyc,
    input  wire        wb_stb,
    input  wire        wb_we,
    output reg         wb_ack
);
"""
RING_OSCILLATOR = (
    PORTS
    + """    wire a, b, c;
    assign a = ~c;
    assign b = ~a;
    assign c = ~b;
    always @(posedge clk) begin
        wb_ack   <= wb_cyc & wb_stb & ~wb_ack;
        wb_dat_r <= {31'd0, c};
    end
endmodule
"""
)
