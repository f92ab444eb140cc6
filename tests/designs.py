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


def shell_design(*commands: str, fatal: int | None = None) -> str:
    """A Verilog design that runs ``commands[k]`` with ``$system`` when word ``k`` of its
    slot is written, and reads back that command's exit status at word ``k``; after command
    ``fatal`` it ends the simulation with ``$fatal``. What a hostile design can do; yosys
    (which defines ``SYNTHESIS``) sees none of it, so it builds for a board as well, and
    runs on the board's twin."""

    def literal(text: str) -> str:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    cases = []
    for k, command in enumerate(commands):
        end = ' $fatal(1, "the design ends the simulation");' if k == fatal else ""
        run = f"status[{k}] = $system({literal(command)});"
        cases.append(f"                {k}: begin {run}{end} end")
    return (
        PORTS
        + f"""    integer status [0:{max(len(commands), 1) - 1}];
    wire access = wb_cyc & wb_stb & ~wb_ack;
    always @(posedge clk) begin
        wb_ack <= access;
        if (access && wb_we) begin
`ifndef SYNTHESIS
            case (wb_adr)
{chr(10).join(cases)}
                default: ;
            endcase
`endif
        end
        if (access) wb_dat_r <= status[wb_adr[{max(len(commands) - 1, 1).bit_length() - 1}:0]];
    end
endmodule
"""
    )
